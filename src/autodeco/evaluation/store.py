"""The sample store of an evaluation run: ``samples.jsonl`` (or ``tuning.jsonl``), appended as answers come.

A *group* is the answers of one (problem, setting key, seed): ``samples_per_seed`` of them (one for
greedy). A group is written in one go, so a killed run leaves at most one incomplete group at the
end of the file; :meth:`SampleStore.finished_groups` drops it, and the resumed run generates it again.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> store = SampleStore(Path(tempfile.mkdtemp()) / "samples.jsonl", samples_per_seed=2)
    >>> store.finished_groups()
    set()
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

from autodeco.common.jsonl import write_text_atomic
from autodeco.evaluation.records import RecordWriter, SampleRecord, read_records
from autodeco.sampling.settings import AUTODECO, GREEDY, STATIC, DecodingSetting

RECORDED_DECIMALS = 4
"""Decimals of the per-token values (T, P, base entropy) kept in a record."""

Group = tuple[str, str, int]
"""(problem id, setting key, seed) of a group of answers."""


class SampleStore:
    """One JSONL file of :class:`~autodeco.evaluation.records.SampleRecord`, read back and appended to.

    Args:
        path: the file (created on the first write).
        samples_per_seed: answers in a complete group of a sampled setting (greedy groups hold one).
    """

    def __init__(self, path: Path, samples_per_seed: int):
        self.path = Path(path)
        self.samples_per_seed = samples_per_seed

    def records(self) -> list[SampleRecord]:
        """Every record in the file (none when it does not exist yet)."""
        return read_records(self.path) if self.path.exists() else []

    def finished_groups(self) -> set[Group]:
        """The complete groups; the records of incomplete ones (a write cut off by a kill) are removed from the file."""
        records = self.records()
        counts = Counter((record.problem_id, record.setting, record.seed) for record in records)
        complete = {group for group, count in counts.items() if count >= self._group_size(group[1])}
        kept = [record for record in records if (record.problem_id, record.setting, record.seed) in complete]
        if len(kept) != len(records):
            write_text_atomic(self.path, "".join(record.to_json() + "\n" for record in kept))
        return complete

    def writer(self) -> RecordWriter:
        """A context manager appending records durably (see :class:`~autodeco.evaluation.records.RecordWriter`)."""
        return RecordWriter(self.path)

    def _group_size(self, setting_key: str) -> int:
        return 1 if setting_key == GREEDY else self.samples_per_seed


def sample_record(
    problem,
    setting: DecodingSetting,
    seed: int,
    index: int,
    completion,
    scored: tuple,
    finished: bool,
    pieces: list[str] | None,
    heuristic_kinds: tuple[str, ...],
) -> SampleRecord:
    """The record of one completion.

    Means of T and P are kept for every method that records them; the per-token values (T, P, token
    pieces) for AutoDeco only (they feed the shuffle controls and the traces); the base entropies for
    AutoDeco and the heuristics (entropy-shift's tuning and the bin-shuffle control read them).

    Args:
        problem: the :class:`~autodeco.problems.problem.Problem` answered.
        setting: how the answer was decoded.
        seed: the sampling seed of its group.
        index: its position in the group.
        completion: the rollout engine's completion (``text``, ``token_ids``, ``num_tokens``, per-token values).
        scored: ``(extracted answer, correct)`` from the scorer.
        finished: whether the answer ended with an end-of-sequence token (not cut off at the limit).
        pieces: the completion's token pieces (AutoDeco only; None otherwise).
        heuristic_kinds: the heuristic methods' kinds, whose records keep their base entropies.
    """
    extracted, correct = scored
    fields = _value_fields(setting, completion, pieces, heuristic_kinds)
    return SampleRecord(
        problem_id=problem.id,
        setting=setting.key,
        seed=seed,
        sample=index,
        text=completion.text,
        extracted=extracted,
        correct=bool(correct),
        num_tokens=completion.num_tokens,
        finished=finished,
        **fields,
    )


def _value_fields(setting: DecodingSetting, completion, pieces, heuristic_kinds) -> dict:
    if setting.kind == STATIC:
        return dict(
            temperature_mean=setting.temperature,
            temperature_std=0.0,
            top_p_mean=setting.top_p,
            top_p_std=0.0,
        )
    if not completion.temperatures:
        return {}
    temperatures, top_ps = completion.temperatures, completion.top_ps
    fields = dict(
        temperature_mean=statistics.fmean(temperatures),
        temperature_std=statistics.pstdev(temperatures),
        top_p_mean=statistics.fmean(top_ps),
        top_p_std=statistics.pstdev(top_ps),
    )
    if setting.kind == AUTODECO:
        fields.update(temperatures=_rounded(temperatures), top_ps=_rounded(top_ps), tokens=pieces)
    if completion.entropies and setting.kind in (AUTODECO, *heuristic_kinds):  # a heuristic's kind is its name
        fields.update(entropies=_rounded(completion.entropies))
    return fields


def _rounded(values) -> list[float]:
    return [round(value, RECORDED_DECIMALS) for value in values]
