"""Shuffle controls' value streams (autodeco.sampling.shuffle): exact multisets, excluded problems, entropy bins."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from autodeco.sampling.settings import DecodingSetting
from autodeco.sampling.shuffle import (
    BinnedValueStream,
    ValuePool,
    ValueStream,
    make_value_stream,
    pool_excluding,
    stream_factory,
)


def numbered_pool(size: int, offset: float = 0.0, seed: int = 0) -> ValuePool:
    """Entry i has T = offset + 0.01 (i + 1) and P = 1 / (i + 2): every pair is distinct and identifies its entry."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.arange(size, dtype=torch.float64)
    entropies = torch.rand(size, generator=generator, dtype=torch.float64) * 4
    return ValuePool(offset + 0.01 * (index + 1), 1.0 / (index + 2), entropies)


def pairs_of(pool: ValuePool) -> list[tuple[float, float]]:
    return list(zip(pool.temperatures.tolist(), pool.top_ps.tolist()))


def test_a_stream_hands_out_the_pool_multiset_exactly_in_every_cycle():
    pool = ValuePool([0.5, 0.5, 0.9, 1.2, 0.7], [0.9, 0.8, 0.9, 1.0, 0.95])  # a repeated T, with different P
    stream = ValueStream(pool, seed=3)
    cycles = [[stream.draw() for _ in range(len(pool))] for _ in range(4)]
    for cycle in cycles:
        assert Counter(cycle) == Counter(pairs_of(pool))  # pairs stay together; multiset exact
    assert len({tuple(cycle) for cycle in cycles}) > 1, "each cycle should be a fresh permutation"


def test_marginals_are_preserved_over_whole_cycles_and_streams_are_seeded():
    pool = numbered_pool(37)
    stream = ValueStream(pool, seed=11)
    draws = [stream.draw() for _ in range(3 * 37)]
    temperatures = sorted(t for t, _ in draws)
    assert temperatures == sorted(pool.temperatures.tolist() * 3)
    assert sorted(p for _, p in draws) == sorted(pool.top_ps.tolist() * 3)
    again = ValueStream(pool, seed=11)
    assert [again.draw() for _ in range(3 * 37)] == draws
    other = ValueStream(pool, seed=12)
    assert [other.draw() for _ in range(37)] != draws[:37]


def test_streams_leave_the_global_random_state_alone():
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    stream = ValueStream(numbered_pool(10), seed=0)
    [stream.draw() for _ in range(25)]
    assert torch.equal(torch.rand(2), expected)


def test_streams_never_draw_from_the_excluded_problem():
    pools = {"a": numbered_pool(6, offset=0.0), "b": numbered_pool(4, offset=1.0), "c": numbered_pool(5, offset=2.0)}
    make_stream = stream_factory(DecodingSetting.shuffle(), pools, ["b", "a"], seed=0)
    for row, excluded in enumerate(["b", "a"]):
        own = set(pairs_of(pools[excluded]))
        others = Counter(pair for problem, pool in pools.items() if problem != excluded for pair in pairs_of(pool))
        for sample in range(3):
            stream = make_stream(row, sample)
            drawn = [stream.draw() for _ in range(sum(others.values()))]
            assert not own & set(drawn)
            assert Counter(drawn) == others  # a full cycle of the other problems' values
    assert [make_stream(0, 0).draw() for _ in range(5)] != [make_stream(0, 1).draw() for _ in range(5)]
    with pytest.raises(ValueError, match="other than 'a'"):
        pool_excluding({"a": numbered_pool(3)}, "a")


def test_bin_edges_are_entropy_quantiles_and_draws_stay_in_the_bin():
    pool = numbered_pool(200, seed=1)
    stream = BinnedValueStream(pool, bins=5, seed=0)
    expected_edges = torch.quantile(pool.entropies, torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64))
    torch.testing.assert_close(stream.edges, expected_edges)
    entry_of = {pair: index for index, pair in enumerate(pairs_of(pool))}
    generator = torch.Generator().manual_seed(2)
    queries = torch.rand(500, generator=generator, dtype=torch.float64) * 5 - 0.5  # also below and above the pool
    for entropy in queries.tolist():
        pair = stream.draw(entropy)
        entry_entropy = pool.entropies[entry_of[pair]]
        wanted = int((stream.edges <= entropy).sum())  # bin k: edge[k-1] <= h < edge[k]
        assert int((stream.edges <= entry_entropy).sum()) == wanted
    counts = Counter(stream.bins_of(pool.entropies).tolist())
    assert sorted(counts) == [0, 1, 2, 3, 4] and all(count == 40 for count in counts.values())


def test_bin_stream_preserves_the_pool_multiset_when_queried_with_the_pool_entropies():
    pool = numbered_pool(60, seed=4)
    stream = BinnedValueStream(pool, bins=4, seed=9)
    order = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    drawn = [stream.draw(pool.entropies[index].item()) for index in order.tolist()]
    assert Counter(drawn) == Counter(pairs_of(pool))


def test_an_empty_bin_falls_back_to_the_nearest_filled_bin():
    pool = ValuePool([0.5, 0.6, 0.7, 0.8], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 2.0])  # ties: edges 1, 1, 1.25
    stream = BinnedValueStream(pool, bins=4, seed=0)
    assert stream.bins_of(torch.tensor([0.5, 1.0, 2.0])).tolist() == [0, 2, 3]
    assert {stream.draw(0.5)[0] for _ in range(6)} <= {0.5, 0.6, 0.7}  # bin 0 is empty: the bin of h = 1 instead
    assert {stream.draw(3.0)[0] for _ in range(3)} == {0.8}


def test_pools_and_streams_refuse_bad_input():
    with pytest.raises(ValueError, match="one entry per token"):
        ValuePool([0.5, 0.6], [1.0])
    with pytest.raises(ValueError, match=r"entry 1 is T=nan"):
        ValuePool([0.5, float("nan")], [1.0, 1.0])
    with pytest.raises(ValueError, match="needs the base entropy"):
        BinnedValueStream(ValuePool([0.5], [1.0]), bins=2)
    with pytest.raises(ValueError, match="base entropy, got None"):
        BinnedValueStream(ValuePool([0.5], [1.0], [0.3]), bins=2).draw()
    with pytest.raises(ValueError, match="only the shuffle and bin-shuffle"):
        make_value_stream(DecodingSetting.autodeco(), numbered_pool(3), 0)
    assert isinstance(make_value_stream(DecodingSetting.bin_shuffle(3), numbered_pool(9), 0), BinnedValueStream)
