"""An evaluation summary as Markdown: the paper-style headline table and the full ``report.md``.

Scores in the summary are fractions in [0, 1]; the Markdown shows percentages.

Example:
    >>> from autodeco.evaluation.records import SampleRecord, GREEDY
    >>> from autodeco.evaluation.summary import build_summary
    >>> summary = build_summary({"methods": {"greedy": GREEDY}}, [SampleRecord("p", GREEDY, 0, 0, "", None, True, 1)])
    >>> render_markdown(summary).splitlines()[0]
    '# AutoDeco evaluation: unnamed dataset'
"""

from __future__ import annotations

from typing import Any

from autodeco.evaluation.methods import HEURISTIC_METHODS
from autodeco.evaluation.records import AUTODECO
from autodeco.evaluation.summary import (
    BETTER,
    LENIENT,
    NO_DIFFERENCE,
    ORACLE,
    ORACLE_CROSS_FITTED,
    ORACLE_LABEL,
    STRICT,
    WORSE,
)
from autodeco.sampling.settings import COMPARISON_METHODS, Method

__all__ = ["headline_table", "render_markdown"]

FIGURE_CAPTIONS = {
    "methods.png": "Pass@1 by method (error bars: std over seeds)",
    "differences.png": "AutoDeco minus each method, with paired bootstrap intervals",
    "oracle.png": "Oracle search: Pass@1 vs temperature at P = 1, and vs top-p at the chosen T",
    "pass_at_k.png": "Pass@k vs k",
    "trace.png": "One AutoDeco sample: per-token temperature and top-p",
}
"""The caption of each figure of :mod:`autodeco.views.report_figures` in ``report.md``."""


def headline_table(summary: dict[str, Any]) -> str:
    """The paper-style results table in Markdown (also printed by the CLI).

    Columns: method (with its parameters), T, P, Pass@1 mean ± std over seeds (%) under the run's scoring,
    Pass@1 under the other scoring, the share of answers cut off at the token limit, Pass@k for a few k (%),
    and AutoDeco minus the method in percentage points with its bootstrap interval; ``*`` marks intervals
    that exclude 0 (never on the test-set-tuned oracle, whose interval ignores its selection).

    Example:
        >>> from autodeco.evaluation.records import SampleRecord, GREEDY
        >>> from autodeco.evaluation.summary import build_summary
        >>> summary = build_summary({"methods": {"greedy": GREEDY}}, [SampleRecord("p", GREEDY, 0, 0, "", None, True, 1)])
        >>> print(headline_table(summary).splitlines()[2])
        | greedy | 0 | – | 100.00 ± 0.00 | 100.00 | 0.0 | – |
    """
    ks = summary["table_ks"]
    confidence = round(100 * summary["bootstrap"]["confidence"])
    scoring = summary.get("scoring", LENIENT)
    other = STRICT if scoring == LENIENT else LENIENT
    header = (["method", "T", "P", f"Pass@1 (%, {scoring})", f"Pass@1 {other} (%)", "cut off (%)"]
              + [f"Pass@{k} (%)" for k in ks] + [f"AutoDeco − method, points [{confidence} % CI]"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    levels = summary.get("autodeco") or {}
    for method in summary["methods"]:
        temperature, top_p = _format_operating_point(method, levels, summary.get("oracle") or {})
        pass_at_1 = f"{100 * method['pass_at_1']['mean']:.2f} ± {100 * method['pass_at_1']['std']:.2f}"
        other_pass_at_1 = _percent((method.get("pass_at_1_other_scoring") or {}).get("mean"))
        cut_off = "–" if method.get("unfinished_share") is None else f"{100 * method['unfinished_share']:.1f}"
        pass_at_k = [_percent(method["pass_at_k"].get(str(k))) for k in ks]
        cells = [_escape(_method_label(method)), temperature, top_p, pass_at_1, other_pass_at_1, cut_off, *pass_at_k,
                 _format_difference(method, star=not method.get("selection_ignored"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _method_label(method: dict[str, Any]) -> str:
    """The method's name with its parameters, e.g. ``edt (T0=0.8, N=0.8, theta=1)``; ``†`` on the in-sample oracle."""
    label = method["label"] + (" †" if method.get("selection_ignored") else "")
    parameters = method.get("parameters") or {}
    if not parameters:
        return label
    return f"{label} ({', '.join(f'{name}={value:g}' for name, value in parameters.items())})"


def render_markdown(summary: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    """The full ``report.md``: header, table, a plain reading of the numbers, oracle curves, figures.

    Args:
        summary: from :func:`~autodeco.evaluation.summary.build_summary`.
        plots: ``file name -> "written" or "skipped: reason"``; figures are linked only when written.

    Example:
        >>> from autodeco.evaluation.records import SampleRecord, GREEDY
        >>> from autodeco.evaluation.summary import build_summary
        >>> summary = build_summary({"methods": {"greedy": GREEDY}}, [SampleRecord("p", GREEDY, 0, 0, "", None, True, 1)])
        >>> "## Reading this" in render_markdown(summary)
        True
    """
    sections = [_header(summary), "## Results", headline_table(summary), _table_notes(summary), "## Reading this", _reading(summary)]
    tuning_section = _tuning_section(summary)
    if tuning_section:
        sections += ["## Heuristics' parameters (tuned on the training split, never on the test set)", tuning_section]
    oracle_section = _oracle_section(summary)
    if oracle_section:
        sections += ["## Oracle search (tuned on the test set)", oracle_section]
    if summary["warnings"]:
        sections += ["## Warnings", "\n".join(f"- {_escape(warning)}" for warning in summary["warnings"])]
    if plots:
        sections += ["## Figures", _figures(plots)]
    return "\n\n".join(sections) + "\n"


def _header(summary: dict[str, Any]) -> str:
    config = summary["config"]
    seeds = config.get("seeds")
    budget = summary["samples_per_problem"]
    samples = (
        f"{budget} ({len(seeds)} seeds × {config['samples_per_seed']} samples per seed); greedy: 1"
        if budget else "unknown (no seeds / samples_per_seed in the config)"
    )
    rows = [
        ("model", config.get("model")),
        ("heads", config.get("heads")),
        ("dataset", config.get("dataset")),
        ("problems", summary["num_problems"]),
        ("samples per problem", samples),
        ("seeds", ", ".join(str(seed) for seed in seeds) if seeds else None),
        ("max new tokens", config.get("max_new_tokens")),
        ("scorer", config.get("scorer")),
        ("MeanShift operating point", config.get("meanshift_source")),
    ]
    table = ["| | |", "|---|---|"] + [f"| {name} | {_escape(str(value))} |" for name, value in rows if value is not None]
    title = f"# AutoDeco evaluation: {_escape(str(config.get('dataset') or 'unnamed dataset'))}"
    return title + "\n\n" + "\n".join(table)


def _table_notes(summary: dict[str, Any]) -> str:
    bootstrap = summary["bootstrap"]
    notes = (
        "Pass@1: mean ± sample std over seeds. Pass@k: unbiased estimator over each problem's pooled samples. "
        "Last column: AutoDeco's minus the method's per-problem success rate, averaged over problems, in "
        f"percentage points; {round(100 * bootstrap['confidence'])} % paired bootstrap interval over problems "
        f"({bootstrap['resamples']} resamples); `*` marks intervals that exclude 0."
    )
    if any(method["name"] == ORACLE for method in summary["methods"]):
        notes += (
            f" The {ORACLE_LABEL} row was chosen by searching the evaluated problems themselves, so it is an "
            "optimistic reference, not a fair competitor."
        )
    return notes


def _reading(summary: dict[str, Any]) -> str:
    """Plain sentences derived from the numbers; claims only what the intervals support."""
    methods = {method["name"]: method for method in summary["methods"]}
    if AUTODECO not in methods:
        return "There are no AutoDeco samples in this run, so nothing is compared with AutoDeco."
    autodeco = methods.pop(AUTODECO)
    seeds = autodeco["num_seeds"]
    spread = f"std {100 * autodeco['pass_at_1']['std']:.2f} over {seeds} seeds" if seeds > 1 else "one seed, so no spread"
    sentences = [f"AutoDeco reaches a Pass@1 of {100 * autodeco['pass_at_1']['mean']:.2f} % ({spread})."]
    by_verdict: dict[str, list[str]] = {BETTER: [], WORSE: [], NO_DIFFERENCE: []}
    for method in methods.values():
        comparison = method["autodeco_minus_method"]
        if comparison is not None and not method.get("selection_ignored"):  # the oracle gets its own sentence
            by_verdict[comparison["verdict"]].append(f"{method['label']} ({_format_difference(method, star=False)})")
    if by_verdict[BETTER]:
        sentences.append("AutoDeco is significantly better than " + _join(by_verdict[BETTER]) + ".")
    if by_verdict[WORSE]:
        sentences.append("AutoDeco is significantly worse than " + _join(by_verdict[WORSE]) + ".")
    if by_verdict[NO_DIFFERENCE]:
        sentences.append(
            "The differences from " + _join(by_verdict[NO_DIFFERENCE]) + " are not significant: "
            "their intervals contain 0, so these methods cannot be told apart on this evaluation."
        )
    sentences.append(_meanshift_sentence(methods.get("meanshift")))
    sentences += _critique_sentences(methods)
    if ORACLE in methods:
        oracle = methods[ORACLE]
        gap = 100 * (autodeco["pass_at_1"]["mean"] - oracle["pass_at_1"]["mean"])
        sentences.append(
            f"The oracle's operating point (T = {oracle['temperature']:.2f}, P = {oracle['top_p']:.2f}) was picked "
            f"on these same problems, so its score is biased upwards and its interval (†) ignores that selection; "
            f"AutoDeco is {abs(gap):.2f} points {'above' if gap >= 0 else 'below'} it."
        )
    if ORACLE_CROSS_FITTED in methods:
        crossed = methods[ORACLE_CROSS_FITTED]
        sentences.append(
            f"Scored honestly (each half of the problems with the setting chosen on the other half), the oracle "
            f"reaches {100 * crossed['pass_at_1']['mean']:.2f} %."
        )
    sentences.append(_truncation_sentence(summary, autodeco))
    if any(by_verdict.values()):
        problems = autodeco["num_problems"]
        sentences.append(
            f"Intervals resample the {problems} problem{'s' if problems != 1 else ''}; with few problems they are "
            "wide, and a difference that is not significant here is not evidence that the methods are equal."
        )
    return " ".join(sentence for sentence in sentences if sentence)


def _critique_sentences(methods: dict[str, dict[str, Any]]) -> list[str]:
    """What the controls, the head factorization and the heuristics say (PAPER.md section 8)."""
    sentences = []
    for name, question in (("shuffle", "reassigning the heads' own values to random tokens"),
                           ("bin-shuffle", "reassigning them within entropy bins")):
        verdict = _verdict(methods.get(name))
        if verdict == BETTER:
            sentences.append(f"AutoDeco beats {question} ({name}, {_format_difference(methods[name], star=False)}): "
                             "the per-token assignment of its values matters.")
        elif verdict is not None:
            sentences.append(
                f"{question[0].upper() + question[1:]} ({name}, {_format_difference(methods[name], star=False)}) "
                + ("does better than AutoDeco" if verdict == WORSE else "does as well within the interval")
                + ": no evidence that the per-token assignment of the heads' values matters here."
            )
    heads = {name: _verdict(methods.get(name)) for name in ("temperature-head", "top-p-head")}
    if all(heads.values()):
        if heads["temperature-head"] == NO_DIFFERENCE and heads["top-p-head"] != NO_DIFFERENCE:
            sentences.append("The temperature head alone (with MeanShift's P) matches AutoDeco while the top-p head "
                             "alone does not: the temperature head carries the effect.")
        elif heads["top-p-head"] == NO_DIFFERENCE and heads["temperature-head"] != NO_DIFFERENCE:
            sentences.append("The top-p head alone (with MeanShift's T) matches AutoDeco while the temperature head "
                             "alone does not: the top-p head carries the effect.")
        else:
            sentences.append(
                "Head factorization: AutoDeco minus temperature-head "
                f"{_format_difference(methods['temperature-head'], star=False)}, minus top-p-head "
                f"{_format_difference(methods['top-p-head'], star=False)}; neither head alone stands out from the other."
            )
    heuristics = [method for method in methods.values() if method["kind"] in HEURISTIC_METHODS]
    if heuristics:
        best = max(heuristics, key=lambda method: method["pass_at_1"]["mean"])
        sentences.append(
            f"The best heuristic sampler is {best['name']} at {100 * best['pass_at_1']['mean']:.2f} % "
            f"(AutoDeco minus it: {_format_difference(best, star=False)}, {_verdict(best) or 'not compared'})."
        )
    return sentences


def _verdict(method: dict[str, Any] | None) -> str | None:
    comparison = (method or {}).get("autodeco_minus_method")
    return comparison["verdict"] if comparison else None


def _truncation_sentence(summary: dict[str, Any], autodeco: dict[str, Any]) -> str:
    """How many answers hit the token limit, and what strict scoring changes."""
    shares = [method["unfinished_share"] for method in summary["methods"] if method.get("unfinished_share") is not None]
    if not shares or autodeco.get("unfinished_share") is None:
        return ""
    scoring = summary.get("scoring", LENIENT)
    other = autodeco["pass_at_1_other_scoring"]["mean"]
    return (
        f"{100 * autodeco['unfinished_share']:.1f} % of AutoDeco's answers were cut off at the token limit "
        f"({100 * min(shares):.1f} to {100 * max(shares):.1f} % across methods; "
        f"{100 * autodeco['correct_unfinished_share']:.1f} % were cut off yet scored correct); "
        f"under {STRICT if scoring == LENIENT else LENIENT} scoring AutoDeco's Pass@1 is {100 * other:.2f} %."
    )


def _tuning_section(summary: dict[str, Any]) -> str | None:
    tuning = summary.get("tuning") or {}
    if not tuning:
        return None
    lines = ["| method | chosen setting | how |", "|---|---|---|"]
    for name, entry in tuning.items():
        how = entry["note"]
        if entry.get("scores"):
            scores = ", ".join(f"{key.split(':', 1)[1]}: {100 * value:.1f}" for key, value in entry["scores"].items())
            how += f"; Pass@1 % per grid setting: {scores}"
        if entry.get("mean_normalized_entropy") is not None:
            how += f"; mean normalized entropy {entry['mean_normalized_entropy']:.4f}"
        lines.append(f"| {name} | {_escape(entry['setting'])} | {_escape(how)} |")
    return "\n".join(lines)


def _meanshift_sentence(meanshift: dict[str, Any] | None) -> str:
    """What the comparison with MeanShift (the static mean of the heads' predictions) says."""
    if meanshift is None or meanshift["autodeco_minus_method"] is None:
        return (
            "MeanShift was not evaluated, so this run cannot tell whether AutoDeco's result comes from "
            "per-token variation or from a better average operating point."
        )
    verdict = meanshift["autodeco_minus_method"]["verdict"]
    difference = _format_difference(meanshift, star=False)
    if verdict == BETTER:
        return (
            f"AutoDeco beats MeanShift ({difference}): here the per-token variation adds something beyond "
            "the heads' mean operating point."
        )
    if verdict == WORSE:
        return (
            f"MeanShift beats AutoDeco ({difference}): a fixed operating point at the heads' mean does better "
            "than varying T and P per token."
        )
    return (
        f"AutoDeco and MeanShift are not significantly different ({difference}): this evaluation gives no "
        "evidence that per-token variation beats a fixed operating point at the heads' mean."
    )


def _oracle_section(summary: dict[str, Any]) -> str | None:
    oracle = summary["oracle"]
    if not oracle.get("available"):
        return f"Not computed: {_escape(oracle.get('reason', 'unknown reason'))}." if summary["config"].get("oracle_grid") else None
    temperatures = ", ".join(
        f"{point['temperature']:.2f}: {100 * point['pass_at_1_mean']:.2f}" for point in oracle["temperature_curve"]
    )
    top_ps = ", ".join(f"{point['top_p']:.2f}: {100 * point['pass_at_1_mean']:.2f}" for point in oracle["top_p_curve"])
    return (
        f"Step 1, temperature at P = 1.00 (Pass@1 %): {temperatures}. Chosen T = {oracle['temperature']:.2f}.\n\n"
        f"Step 2, top-p at T = {oracle['temperature']:.2f} (Pass@1 %): {top_ps}. Chosen P = {oracle['top_p']:.2f}."
    )


def _figures(plots: dict[str, str]) -> str:
    lines = []
    for name, status in plots.items():
        caption = FIGURE_CAPTIONS.get(name, name)
        lines.append(f"![{caption}]({name})" if status == "written" else f"- {name}: {status}")
    return "\n\n".join(lines)


def _format_operating_point(method: dict[str, Any], levels: dict[str, Any], oracle: dict[str, Any]) -> tuple[str, str]:
    kind = method["kind"]
    if kind == "greedy":
        return "0", "–"
    if kind == "autodeco":
        if levels:
            return f"dynamic (mean {levels['temperature_mean']:.2f})", f"dynamic (mean {levels['top_p_mean']:.2f})"
        return "dynamic", "dynamic"
    if method["name"] == ORACLE_CROSS_FITTED:
        chosen = (oracle.get("cross_fitted") or {}).get("settings") or []
        return "per half: " + " / ".join(chosen), "–"
    if method.get("temperature") is not None:
        return f"{method['temperature']:.2f}", f"{method['top_p']:.2f}"
    return _method_operating_point(COMPARISON_METHODS[kind], method.get("parameters") or {})


def _method_operating_point(row: Method, parameters: dict[str, float]) -> tuple[str, str]:
    """The T and P cells of a comparison method, as its row of the methods table says they read.

    Example:
        >>> from autodeco.sampling.settings import COMPARISON_METHODS
        >>> _method_operating_point(COMPARISON_METHODS["min-p"], {"T": 0.7, "min_p": 0.1})
        ('0.70', 'min-p')
    """
    temperature = "dynamic"
    if row.report_temperature == "static" and "T" in parameters:
        temperature = f"{parameters['T']:.2f}"
    elif row.report_temperature == "gated":
        temperature = f"0 or {parameters['T']:.2f}"
    if row.truncation:
        return temperature, row.kind
    return temperature, f"{parameters['P']:.2f}" if "P" in parameters else "dynamic"


def _format_difference(method: dict[str, Any], *, star: bool = True) -> str:
    comparison = method["autodeco_minus_method"]
    if comparison is None:
        return "–"
    mark = "*" if star and comparison["verdict"] != NO_DIFFERENCE else ""
    points = [100 * comparison[field] + 0.0 for field in ("mean_difference", "low", "high")]  # + 0.0: no "-0.00"
    return f"{points[0]:+.2f} [{points[1]:+.2f}, {points[2]:+.2f}]{mark}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _escape(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")
