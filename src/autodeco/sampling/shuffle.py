"""Shuffle controls: AutoDeco's own per-token (T, P) values, reassigned across tokens.

The ``shuffle`` and ``bin-shuffle`` settings (PAPER.md section 8) keep the distribution of the
values AutoDeco predicted but break their assignment to tokens: each generated token takes a
recorded ``(T, P)`` pair (kept together) from AutoDeco's completions of *other* problems. A
:class:`ValueStream` draws without replacement from a random permutation of its :class:`ValuePool`
and reshuffles when the pool is used up, so over every full cycle it hands out exactly the pool's
multiset of pairs: the marginal distributions of T and P (and their joint) are preserved exactly.
A :class:`BinnedValueStream` does the same within entropy bins: a step whose base entropy falls in
bin ``k`` gets a pair recorded at a step whose base entropy fell in bin ``k`` (edges at the pool's
entropy quantiles).

Example:
    >>> pools = {"a": ValuePool([0.5, 0.6], [0.9, 0.8], [1.0, 2.0]), "b": ValuePool([1.5], [0.7], [3.0])}
    >>> stream = ValueStream(pool_excluding(pools, "b"), seed=0)
    >>> sorted([stream.draw(), stream.draw()])
    [(0.5, 0.9), (0.6, 0.8)]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch

from autodeco.common.seeds import derived_seed
from autodeco.sampling.settings import BIN_SHUFFLE, DEFAULT_ENTROPY_BINS, SHUFFLE, DecodingSetting


@dataclasses.dataclass
class ValuePool:
    """Recorded per-token values: one ``(T, P)`` pair per generated token, with its base entropy.

    Example:
        >>> len(ValuePool([0.5, 0.6], [0.9, 1.0]))
        2
    """

    temperatures: torch.Tensor
    """``(N,)`` temperatures (> 0); lists are converted."""
    top_ps: torch.Tensor
    """``(N,)`` top-p values in (0, 1]."""
    entropies: torch.Tensor | None = None
    """``(N,)`` base entropies in nats (needed by :class:`BinnedValueStream` only)."""

    def __post_init__(self):
        self.temperatures = torch.as_tensor(self.temperatures, dtype=torch.float64).flatten()
        self.top_ps = torch.as_tensor(self.top_ps, dtype=torch.float64).flatten()
        if self.entropies is not None:
            self.entropies = torch.as_tensor(self.entropies, dtype=torch.float64).flatten()
        lengths = {"temperatures": len(self.temperatures), "top_ps": len(self.top_ps)}
        if self.entropies is not None:
            lengths["entropies"] = len(self.entropies)
        if len(set(lengths.values())) != 1:
            raise ValueError(f"a value pool needs one entry per token in each list, got lengths {lengths}")
        bad_t = ~(torch.isfinite(self.temperatures) & (self.temperatures > 0))
        bad_p = ~((self.top_ps > 0) & (self.top_ps <= 1))
        if bad_t.any() or bad_p.any():
            index = int((bad_t | bad_p).nonzero()[0])
            raise ValueError(
                f"a value pool needs temperatures > 0 and top-p in (0, 1]; entry {index} is "
                f"T={self.temperatures[index].item()}, P={self.top_ps[index].item()} (drop values recorded after "
                "a completion's end)"
            )
        if self.entropies is not None and not torch.isfinite(self.entropies).all():
            index = int((~torch.isfinite(self.entropies)).nonzero()[0])
            value = self.entropies[index].item()
            raise ValueError(f"a value pool's entropies must be finite; entry {index} is {value}")

    def __len__(self) -> int:
        return len(self.temperatures)

    @classmethod
    def concatenate(cls, pools: Sequence[ValuePool]) -> ValuePool:
        """One pool holding every entry of ``pools`` (entropies kept only if every pool has them).

        Example:
            >>> len(ValuePool.concatenate([ValuePool([0.5], [1.0]), ValuePool([0.7, 0.8], [0.9, 0.9])]))
            3
        """
        if not pools:
            raise ValueError("cannot build a value pool from no pools: AutoDeco recorded no values on other problems")
        have_entropies = all(pool.entropies is not None for pool in pools)
        return cls(
            torch.cat([pool.temperatures for pool in pools]),
            torch.cat([pool.top_ps for pool in pools]),
            torch.cat([pool.entropies for pool in pools]) if have_entropies else None,
        )


def pool_excluding(pools: Mapping[str, ValuePool], excluded: str) -> ValuePool:
    """The values recorded on every problem but ``excluded`` (one pool per problem id in ``pools``).

    Raises:
        ValueError: when no other problem has recorded values.
    """
    others = [pool for problem, pool in sorted(pools.items()) if problem != excluded and len(pool)]
    if not others:
        raise ValueError(
            f"no AutoDeco values recorded on problems other than {excluded!r}: the shuffle controls need "
            "AutoDeco's completions of at least two problems"
        )
    return ValuePool.concatenate(others)


class _Cycle:
    """Indices handed out in a random order, each once per cycle; a fresh permutation when used up."""

    def __init__(self, indices: torch.Tensor, generator: torch.Generator):
        self.indices = indices
        self.generator = generator
        self.order = indices[:0]
        self.position = 0

    def next(self) -> int:
        if self.position == len(self.order):
            self.order = self.indices[torch.randperm(len(self.indices), generator=self.generator)]
            self.position = 0
        index = int(self.order[self.position])
        self.position += 1
        return index


class ValueStream:
    """``(T, P)`` pairs drawn without replacement from a random permutation of a pool, reshuffled when used up.

    Args:
        pool: the values to hand out (not empty).
        seed: seed of the stream's own ``torch.Generator`` (the global random state is not touched).
    """

    def __init__(self, pool: ValuePool, seed: int):
        if len(pool) == 0:
            raise ValueError("a value stream needs a non-empty pool")
        self.pool = pool
        self.generator = torch.Generator().manual_seed(int(seed))
        self.cycle = _Cycle(torch.arange(len(pool)), self.generator)

    def draw(self, entropy: float | None = None) -> tuple[float, float]:
        """The next ``(temperature, top_p)`` pair (``entropy`` is ignored: every step draws from the whole pool)."""
        index = self.cycle.next()
        return self.pool.temperatures[index].item(), self.pool.top_ps[index].item()


class BinnedValueStream:
    """``(T, P)`` pairs drawn without replacement within the entropy bin of the current step.

    The bin edges are the pool's entropy quantiles at ``1/bins, ..., (bins-1)/bins``; bin ``k`` holds
    entropies ``h`` with ``edge[k-1] <= h < edge[k]`` (the first and last bins are open-ended), for the
    pool's entries and the current step alike. Each bin cycles through its own entries as a
    :class:`ValueStream` does. A step whose bin holds no entry (possible only when tied entropies make
    two edges equal, or below the pool's smallest entropy) draws from the nearest non-empty bin.

    Args:
        pool: the values, with entropies.
        bins: number of entropy bins, >= 1.
        seed: seed of the stream's own ``torch.Generator``.
    """

    def __init__(self, pool: ValuePool, bins: int = DEFAULT_ENTROPY_BINS, seed: int = 0):
        if pool.entropies is None:
            raise ValueError("bin-shuffle needs the base entropy of every pooled value: build the pool with entropies")
        if len(pool) == 0:
            raise ValueError("a value stream needs a non-empty pool")
        if isinstance(bins, bool) or bins != int(bins) or bins < 1:
            raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
        self.pool = pool
        self.generator = torch.Generator().manual_seed(int(seed))
        levels = torch.arange(1, int(bins), dtype=torch.float64) / int(bins)  # (bins - 1,)
        self.edges = torch.quantile(pool.entropies, levels)  # (bins - 1,) ascending
        entry_bins = self.bins_of(pool.entropies)  # (N,)
        self.cycles = [_Cycle((entry_bins == k).nonzero().flatten(), self.generator) for k in range(int(bins))]
        self.nonempty = torch.tensor([len(cycle.indices) > 0 for cycle in self.cycles])

    def bins_of(self, entropies: torch.Tensor) -> torch.Tensor:
        """The bin index of each entropy, ``(N,)`` in ``[0, bins)``."""
        return torch.searchsorted(self.edges, torch.as_tensor(entropies, dtype=torch.float64), right=True)

    def draw(self, entropy: float | None = None) -> tuple[float, float]:
        """The next ``(temperature, top_p)`` pair of the bin of ``entropy`` (the current step's base entropy)."""
        if entropy is None or not math.isfinite(entropy):
            raise ValueError(f"bin-shuffle draws need the step's base entropy, got {entropy!r}")
        wanted = int(self.bins_of(torch.tensor([entropy]))[0])
        if not self.nonempty[wanted]:
            distance = (torch.arange(len(self.cycles)) - wanted).abs().double()  # (bins,)
            wanted = int(distance.masked_fill(~self.nonempty, math.inf).argmin())
        index = self.cycles[wanted].next()
        return self.pool.temperatures[index].item(), self.pool.top_ps[index].item()


def make_value_stream(setting: DecodingSetting, pool: ValuePool, seed: int) -> ValueStream | BinnedValueStream:
    """The stream a shuffle setting draws from: :class:`ValueStream` (shuffle) or :class:`BinnedValueStream`.

    Example:
        >>> type(make_value_stream(DecodingSetting.bin_shuffle(2), ValuePool([1.0, 2.0], [1.0, 1.0], [0.1, 0.2]), 0))
        <class 'autodeco.sampling.shuffle.BinnedValueStream'>
    """
    if setting.kind == SHUFFLE:
        return ValueStream(pool, seed)
    if setting.kind == BIN_SHUFFLE:
        return BinnedValueStream(pool, int(setting.param("bins")), seed)
    raise ValueError(f"only the {SHUFFLE} and {BIN_SHUFFLE} settings draw from value pools, got {setting.key!r}")


def stream_factory(setting: DecodingSetting, pools: Mapping[str, ValuePool], problem_ids: Sequence[str], seed: int):
    """``make_stream(prompt_row, sample_index)`` for :func:`autodeco.sampling.rollouts.complete`.

    Row ``prompt_row`` of the batch is problem ``problem_ids[prompt_row]``; its stream draws from the
    values of every other problem in ``pools`` (:func:`pool_excluding`), seeded by
    ``derived_seed(seed, setting.key, problem id, sample_index)`` so it does not depend on batching.
    """

    others: dict[str, ValuePool] = {}  # problem -> the other problems' pool, built once for all its samples

    def make_stream(prompt_row: int, sample_index: int):
        problem = problem_ids[prompt_row]
        if problem not in others:
            others[problem] = pool_excluding(pools, problem)
        stream_seed = derived_seed("value-stream", seed, setting.key, problem, sample_index)
        return make_value_stream(setting, others[problem], stream_seed)

    return make_stream
