"""``autodeco diagnose``: does token-level temperature beat one static mean temperature on held-out tokens?"""

from __future__ import annotations

from autodeco.cli._parser import check_at_least
from autodeco.common.console import say


def diagnose(
    heads: str,
    data: str,
    output: str = "runs/diagnose",
    base: str | None = None,
    limit: int | None = None,
    batch_size: int = 4,
    max_length: int | None = None,
    resamples: int = 1000,
    seed: int = 0,
    on_bad_line: str = "stop",
):
    """Diagnose heads on held-out verified trajectories: token-level control, or just a better mean?

    Teacher-forced on the completion tokens: predicted T and P against the base model's entropy,
    top probability and nucleus size, and the inverse-temperature test: the second-order
    (g·delta − ½·v·delta²) and exact gain in the verified tokens' log-probability of the heads'
    per-token 1/T over one static mean 1/T, with bootstrap intervals over trajectories and a
    verdict. Writes OUTPUT/diagnose.json, diagnose.md, tokens.jsonl and three PNG figures.

    Args:
        heads: heads checkpoint folder (e.g. from `autodeco train`), or shipped:NAME for a shipped checkpoint.
        data: held-out verified trajectories JSONL (e.g. heldout.jsonl from `autodeco sample`).
        output: output folder (locked while the command runs; files are replaced atomically).
        base: base model (default: the one the heads record).
        limit: diagnose only the first this many trajectories (default: all).
        batch_size: sequences per forward pass.
        max_length: truncate longer trajectories to this many tokens (default: no limit).
        resamples: bootstrap resamples of the trajectories for the intervals.
        seed: seed of the bootstrap.
        on_bad_line: a malformed data line: stop or skip.
    """
    import time
    from pathlib import Path

    from autodeco.common.runlock import run_lock
    from autodeco.evaluation.diagnose import diagnose_tokens, summarise_diagnosis
    from autodeco.model.shipped import resolve_heads_reference
    from autodeco.sampling.inference import load_for_generation
    from autodeco.data.trajectories import read_trajectories
    from autodeco.views.diagnose_report import render_diagnosis, write_diagnose_report

    check_at_least("--limit", limit, none=" (leave --limit out for all trajectories)")
    check_at_least("--batch-size", batch_size)
    check_at_least("--max-length", max_length, 2)
    check_at_least("--resamples", resamples)
    if not Path(resolve_heads_reference(heads)).is_dir():
        raise ValueError(f"heads checkpoint folder {heads!r} does not exist or is not a folder; pass a heads folder "
                         "(from `autodeco train` or `autodeco init`, e.g. runs/quickstart/heads) or shipped:NAME")
    heads = str(resolve_heads_reference(heads))
    trajectories = read_trajectories([data], on_bad_line=on_bad_line, what="DATA file")[:limit]
    if not trajectories:
        raise ValueError(f"DATA file {data!r} holds no trajectory; pass a JSONL file of verified trajectories "
                         "(one {\"prompt\": ..., \"completion\": ...} object per line, e.g. heldout.jsonl "
                         "from `autodeco sample`)")
    with run_lock(output, "diagnose", inputs={"heads": heads, "DATA file": data}):
        started = time.perf_counter()
        loaded = load_for_generation(heads, base)
        tokens = diagnose_tokens(loaded.model, loaded.tokenizer, trajectories, batch_size=batch_size,
                                 max_length=max_length, progress=True)
        summary = summarise_diagnosis(tokens, resamples=resamples, seed=seed)
        summary["run"] = {"heads": heads, "data": data, "base": loaded.model.config.base_model_name_or_path,
                          "limit": limit, "batch_size": batch_size, "max_length": max_length,
                          "seconds": time.perf_counter() - started}
        paths = write_diagnose_report(output, summary, tokens)
    say(render_diagnosis(summary))
    say(f"report: {paths['diagnose.md']}")
    return summary
