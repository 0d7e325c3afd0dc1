"""The decoding-control report: ``control.json``, ``control.md`` and ``control.png``, each written atomically.

Renders the dict of :func:`autodeco.evaluation.control.control_evaluation`: per question source and
answer mode a table like the paper's Table 4 (mean T and P without and with a low, high or neutral
command, the paired change and the share of questions moved the commanded way), the same shares per
phrasing family, the heads' reaction on identical tokens, diversity and accuracy with paired
intervals, the goal check, and a figure of the share moved per family against the 95 % goal.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from autodeco.common.figures import save_png, subplots
from autodeco.common.jsonl import write_bytes_atomic, write_text_atomic
from autodeco.data.phrasings import KINDS

__all__ = [
    "control_figure", "control_markdown", "control_table", "family_table", "same_answer_table", "write_control_report",
]

_PNG_DPI = 120
_MEASURE_COLORS = {"temperature": "#2c7bb6", "top_p": "#fdae61"}
_MEASURE_LABELS = {"temperature": "T", "top_p": "P"}
_WORDS = {"low": "lower", "high": "higher"}


def _interval(entry: dict[str, float], scale: float = 1.0, digits: int = 3) -> str:
    return (f"{entry['mean'] * scale:+.{digits}f} [{entry['low'] * scale:+.{digits}f}, "
            f"{entry['high'] * scale:+.{digits}f}]")


def _percent(share: float) -> str:
    return f"{share:.0%}".replace("%", " %")


def _shares(entry: dict[str, Any], kind: str) -> str:
    """A measure's shares: moved the commanded way (low/high), or raised/lowered (neutral)."""
    if kind in _WORDS:
        return f"{_percent(entry['moved'])} {_WORDS[kind]}"
    return f"{_percent(entry['raised'])} ↑ / {_percent(entry['lowered'])} ↓"


def control_table(result: dict[str, Any], source: str, mode: str) -> str:
    """The headline table of one source and answer mode (Markdown): mean T and P per prompt, changes, shares moved.

    Example:
        >>> entry = lambda w, c, m: {"without": w, "with": c, "moved": m, "difference": {"mean": c - w, "low": c - w, "high": c - w}}
        >>> modes = {"sampled": {"baseline": {"temperature": 0.5, "top_p": 0.9}, "neutral": None, "directions": {
        ...     kind: {"temperature": entry(0.5, t, 1.0), "top_p": entry(0.9, p, 0.5)}
        ...     for kind, t, p in (("low", 0.4, 0.8), ("high", 0.6, 0.95))}}}
        >>> result = {"by_source": {"arithmetic": {"num_questions": 2, "modes": modes}}}
        >>> print(control_table(result, "arithmetic", "sampled").splitlines()[3])
        | low | 0.400 | -0.100 [-0.100, -0.100] | 100 % lower | 0.800 | -0.100 [-0.100, -0.100] | 50 % lower |
    """
    summary = result["by_source"][source]
    measured = summary["modes"][mode]
    lines = [
        f"| {source}, {mode} (N = {summary['num_questions']}) | mean T | T change [95 % CI] | T moved | mean P "
        "| P change [95 % CI] | P moved |",
        "|---|---|---|---|---|---|---|",
        f"| none (baseline) | {measured['baseline']['temperature']:.3f} | – | – | {measured['baseline']['top_p']:.3f} "
        "| – | – |",
    ]
    rows = [(kind, measured["directions"][kind]) for kind in ("low", "high")]
    if measured.get("neutral") is not None:
        rows.append(("neutral", measured["neutral"]))
    for kind, entry in rows:
        cells = [f"{entry[m]['with']:.3f} | {_interval(entry[m]['difference'])} | {_shares(entry[m], kind)}"
                 for m in ("temperature", "top_p")]
        lines.append(f"| {kind} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def family_table(result: dict[str, Any], source: str, families: list[dict] | None = None) -> str:
    """Per eval phrasing family (Markdown): the share of its questions whose T and P moved, in every answer mode.

    Neutral families show the share raised and lowered instead. ``families``: the settings' ``eval_families``
    (their language); None: read from ``result["settings"]``.

    Example:
        >>> family = lambda t, p: {"family": "plain-low", "kind": "low", "placement": "after", "questions": 4,
        ...                        "temperature": {"moved": t}, "top_p": {"moved": p}}
        >>> modes = {"sampled": {"families": [family(1.0, 0.75)]}, "greedy": {"families": [family(1.0, 1.0)]}}
        >>> result = {"by_source": {"gsm8k": {"modes": modes}}}
        >>> print(family_table(result, "gsm8k", [{"name": "plain-low", "kind": "low", "language": "en"}]).splitlines()[2])
        | plain-low | low | after | en | eval | 4 | 100 % lower | 75 % lower | 100 % lower | 100 % lower |
    """
    if families is None:
        families = result.get("settings", {}).get("eval_families") or []
    languages = {(family["kind"], family["name"]): family.get("language", "") for family in families}
    modes = result["by_source"][source]["modes"]
    header = "| family | kind | placement | language | split | N |" + "".join(
        f" {mode}: T moved | {mode}: P moved |" for mode in modes)
    lines = [header, "|" + "---|" * (6 + 2 * len(modes))]
    first = next(iter(modes.values()))["families"]
    for index, entry in enumerate(first):
        cells = [entry["family"], entry["kind"], entry["placement"],
                 languages.get((entry["kind"], entry["family"]), ""), "eval", str(entry["questions"])]
        for measured in modes.values():
            found = measured["families"][index]
            cells += [_shares(found[measure], found["kind"]) for measure in ("temperature", "top_p")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def same_answer_table(result: dict[str, Any], source: str | None = None) -> str | None:
    """The heads' own reaction (Markdown): T and P on the plain sampled answers teacher-forced under each command.

    None when the source has no such measurement. ``source``: None for the only one.

    Example:
        >>> entry = lambda w, c, m: {"without": w, "with": c, "moved": m, "difference": {"mean": c - w, "low": c - w, "high": c - w}}
        >>> same = {kind: {"temperature": entry(0.5, t, 1.0), "top_p": entry(0.9, p, 0.75)}
        ...         for kind, t, p in (("low", 0.4, 0.8), ("high", 0.6, 0.95))}
        >>> result = {"sources": ["a"], "by_source": {"a": {"num_questions": 4, "same_answer": {**same, "neutral": None}}}}
        >>> print(same_answer_table(result).splitlines()[2])
        | low | 100 % lower | -0.100 [-0.100, -0.100] | 75 % lower | -0.100 [-0.100, -0.100] |
    """
    source = source if source is not None else result["sources"][0]
    summary = result["by_source"][source]
    same = summary.get("same_answer")
    if same is None:
        return None
    lines = [
        f"| {source} (N = {summary['num_questions']}, same tokens) | T moved | T change [95 % CI] | P moved "
        "| P change [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    for kind in KINDS:
        if same.get(kind) is None:
            continue
        cells = [f"{_shares(same[kind][measure], kind)} | {_interval(same[kind][measure]['difference'])}"
                 for measure in ("temperature", "top_p")]
        lines.append(f"| {kind} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def _behaviour_table(result: dict[str, Any], source: str) -> str:
    """Accuracy per mode and prompt, and (sampled) the diversity of the K answers, with paired changes."""
    modes = result["by_source"][source]["modes"]
    lines = ["| mode | prompt | accuracy (%) | change (points) [paired 95 % CI] | distinct answers (of K) "
             "| distinct-n ratio |", "|---|---|---|---|---|---|"]
    for mode, measured in modes.items():
        changes = {**measured["directions"], **({"neutral": measured["neutral"]} if measured.get("neutral") else {})}
        for condition, values in measured["conditions"].items():
            accuracy = values["accuracy"]
            change = _interval(changes[condition]["accuracy"]["difference"], 100, 1) if condition in changes else "–"
            diversity = (f"{values['distinct_answers']['mean']:.2f} | {values['distinct_ngrams']['mean']:.3f}"
                         if "distinct_ngrams" in values else "– (one answer) | –")
            lines.append(
                f"| {mode} | {condition} | {accuracy['mean'] * 100:.1f} [{accuracy['interval']['low'] * 100:.1f}, "
                f"{accuracy['interval']['high'] * 100:.1f}] | {change} | {diversity} |"
            )
    sampled = modes.get("sampled")
    if sampled is not None:
        lines += ["", "| sampled: change with the command [paired 95 % CI] | distinct answers | distinct-n ratio |",
                  "|---|---|---|"]
        changes = {**sampled["directions"], **({"neutral": sampled["neutral"]} if sampled.get("neutral") else {})}
        for kind, entry in changes.items():
            lines.append(f"| {kind} − none | {_interval(entry['distinct_answers']['difference'], digits=2)} | "
                         f"{_interval(entry['distinct_ngrams']['difference'])} |")
    return "\n".join(lines)


def _comparison_line(comparison: dict[str, Any], compared: str | None) -> str:
    return (f"Sampled accuracy without a command: these heads {comparison['accuracy_without_command'] * 100:.1f} %, "
            f"`{compared}` {comparison['compare_accuracy_without_command'] * 100:.1f} % "
            f"(mean T {comparison['compare_temperature']:.3f}, P {comparison['compare_top_p']:.3f}); difference "
            f"{_interval(comparison['difference'], 100, 1)} points (paired bootstrap over questions, same seeds).")


def goal_lines(goal: dict[str, Any]) -> list[str]:
    """The goal check as Markdown lines: a table of criteria, what was not judged, and the verdict."""
    lines = ["| criterion | measured | met |", "|---|---|---|"]
    lines += [f"| {item['criterion']} | {item['value']:.3f} | {'yes' if item['met'] else '**no**'} |"
              for item in goal["criteria"]]
    for reason in goal.get("not_judged", []):
        lines += ["", f"Not judged: {reason}."]
    return lines + ["", f"All criteria met: **{'yes' if goal['met'] else 'no'}** "
                        f"({sum(item['met'] for item in goal['criteria'])} of {len(goal['criteria'])})."]


def control_markdown(result: dict[str, Any], plot: str | None = "control.png") -> str:
    """The whole report as Markdown (``control.md``)."""
    settings = result.get("settings", {})
    lengths = settings.get("max_new_tokens_per_source") or {}
    sources = ", ".join(f"{source} (N = {result['by_source'][source]['num_questions']}, at most "
                        f"{lengths.get(source, '?')} new tokens)" for source in result["sources"])
    parts = [
        "# Natural-language control of decoding",
        "",
        f"Heads: `{settings.get('heads')}` ({settings.get('model', '')}). Questions: {sources}; "
        f"{settings.get('split')} split. Answer modes: sampled (K = {settings.get('samples')} answers per question and "
        "prompt, with the heads' own T and P) and/or greedy (one answer; its T and P are the heads' values at each "
        f"greedy token, teacher-forced). Seed {settings.get('seed')}, the same for the paired runs. Commands from the "
        f"phrasing file's eval families (never used in training): {settings.get('phrasings')}.",
        "",
        "Means of the per-token T and P over every answer token, per question, then over questions; "
        "\"moved\" is the share of questions whose mean moved the commanded way. A neutral sentence of similar "
        "length must move neither (↑ / ↓: the shares raised and lowered).",
    ]
    for source in result["sources"]:
        parts += ["", f"## {source}", ""]
        for mode in result["by_source"][source]["modes"]:
            parts += [control_table(result, source, mode), ""]
        parts += ["### Per phrasing family", "", family_table(result, source)]
        same = same_answer_table(result, source)
        if same is not None:
            gap = result["by_source"][source]["same_answer"]["generated_gap"]
            parts += [
                "", "### The heads alone, on the same tokens", "",
                "A command also changes what the model writes, and a mean over other tokens can move for that reason "
                "alone. Here each question's plain sampled answers are teacher-forced after the plain and the "
                "commanded prompts, so both means cover identical tokens and only the heads' reaction differs "
                f"(teacher-forced plain means match the generated ones within {gap:.1e}).",
                "", same,
            ]
        parts += ["", "### Accuracy and what the model writes", "",
                  f"Accuracy: share of correct answers. Diversity across the K sampled answers of a question: distinct "
                  f"final answers, and distinct token {settings.get('distinct_ngram', 2)}-grams over all of them.",
                  "", _behaviour_table(result, source)]
        comparison = result["by_source"][source].get("comparison")
        if comparison is not None:
            parts += ["", _comparison_line(comparison, settings.get("compare_heads"))]
    parts += ["", "## Goal check", "", *goal_lines(result["goal"])]
    if plot:
        parts += ["", f"![share of questions moved per phrasing family]({plot})"]
    families = settings.get("eval_families")
    if families:
        parts += ["", "## Commands used", "", "| family | kind | placement | language | style | phrasings |",
                  "|---|---|---|---|---|---|"]
        parts += [f"| {family['name']} | {family['kind']} | {family['placement']} | {family.get('language', '')} | "
                  f"{family.get('style', '')} | " + "; ".join(f"“{text}”" for text in family["phrasings"]) + " |"
                  for family in families]
    return "\n".join(parts) + "\n"


def control_figure(result: dict[str, Any]):
    """A panel per source (rows) and mode (columns): the share of questions moved the commanded way, T and P bars.

    Each command kind's bars over all its questions come first, then one pair per eval family (families on a
    shared vertical axis); the dashed line is the 95 % goal. The neutral sentence's mean changes (with intervals)
    are in each panel's title.
    """
    from autodeco.evaluation.control_summary import GOAL_MOVED_SHARE

    sources = result["sources"]
    columns = max(len(result["by_source"][source]["modes"]) for source in sources)
    groups_most = max(2 + sum(entry["kind"] in _WORDS for entry in measured["families"]) for source in sources
                      for measured in result["by_source"][source]["modes"].values())
    size = (2.2 + 3.6 * columns, len(sources) * (1.5 + 0.3 * groups_most))
    figure, axes_list = subplots(len(sources), columns, size, sharex=True)  # row per source, column per mode
    for row, source in enumerate(sources):
        modes = list(result["by_source"][source]["modes"])
        for column in range(columns):
            axes = axes_list[row * columns + column]
            if column >= len(modes):
                axes.set_visible(False)
                continue
            _family_panel(axes, result["by_source"][source], source, modes[column], GOAL_MOVED_SHARE,
                          labels=column == 0)
    handles, names = axes_list[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside upper center", ncol=len(names), fontsize=8)
    return figure


def _family_panel(axes, summary: dict[str, Any], source: str, mode: str, goal: float, *, labels: bool) -> None:
    """T and P bars of the share moved per kind (all its questions) and per family, the goal line, the neutral change."""
    measured = summary["modes"][mode]
    groups = []  # (label, {measure: share moved}), top to bottom
    for kind in _WORDS:
        groups.append((f"{kind}: all questions", {m: measured["directions"][kind][m]["moved"] for m in _MEASURE_LABELS}))
        groups += [(f"{kind}: {entry['family']} ({entry['placement']}, n = {entry['questions']})",
                    {m: entry[m]["moved"] for m in _MEASURE_LABELS})
                   for entry in measured["families"] if entry["kind"] == kind]
    height = 0.4
    positions = [-index for index in range(len(groups))]  # the first group on top
    for shift, measure in ((height / 2, "temperature"), (-height / 2, "top_p")):
        axes.barh([position + shift for position in positions], [100 * shares[measure] for _, shares in groups], height,
                  color=_MEASURE_COLORS[measure], edgecolor="black", linewidth=0.4,
                  label=f"{_MEASURE_LABELS[measure]} moved")
    axes.axvline(100 * goal, color="#d7191c", linestyle="--", linewidth=1, label=f"goal {goal * 100:.0f} %")
    for index, (label, _) in enumerate(groups):
        if label.endswith("all questions") and index:
            axes.axhline(positions[index] + 0.5, color="#777777", linewidth=0.6)  # between the low and high blocks
    axes.set_yticks(positions, [label for label, _ in groups] if labels else [""] * len(groups), fontsize=7)
    axes.set_xlim(0, 100)
    axes.set_xlabel("questions moved the commanded way (%)", fontsize=8)
    title = f"{Path(source).name if os.sep in source else source}, {mode} (N = {summary['num_questions']})"
    neutral = measured.get("neutral")
    if neutral is not None:
        title += "".join(f"\nneutral Δ{_MEASURE_LABELS[m]} {_interval(neutral[m]['difference'])}" for m in _MEASURE_LABELS)
    axes.set_title(title, fontsize=8)


def write_control_report(out_dir: str | os.PathLike[str], result: dict[str, Any]) -> dict[str, Path]:
    """Write ``control.json``, ``control.png`` and ``control.md`` into ``out_dir`` (each atomically).

    Returns:
        ``file name -> path``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"control.json": write_bytes_atomic(out / "control.json", (json.dumps(result, indent=2) + "\n").encode())}
    written["control.png"] = save_png(control_figure(result), out / "control.png", dpi=_PNG_DPI)
    written["control.md"] = write_text_atomic(out / "control.md", control_markdown(result, "control.png"))
    return written

