"""The balanced batch plan: coverage, determinism, tail rule, balance; capacity buckets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastchgnet.data.sampler import (
    BalancedBatchSampler,
    load_cv,
    plan_batches,
    plan_random_batches,
    structure_costs,
)

costs_lists = st.lists(st.integers(min_value=0, max_value=10_000), min_size=0, max_size=300)
ranks = st.integers(min_value=1, max_value=6)
batch_sizes = st.integers(min_value=1, max_value=9)
pools = st.sampled_from([None, 1, 4])


def long_tailed_sizes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    atoms = np.clip(np.round(rng.lognormal(np.log(20), 0.9, n)), 1, 444).astype(np.int64)
    bonds = (atoms * rng.uniform(20, 60, n)).astype(np.int64)
    angles = (bonds * rng.uniform(2, 8, n)).astype(np.int64)
    return np.stack([atoms, bonds, angles], axis=1)


@settings(max_examples=150, deadline=None)
@given(costs_lists, ranks, batch_sizes, st.integers(0, 3), pools)
def test_every_index_used_once_per_epoch(costs, world, batch, epoch, pool):
    plan = plan_batches(costs, world, batch, seed=1, epoch=epoch, size_pool=pool)
    used = [i for step in plan for rank in step for i in rank]
    assert sorted(used) == list(range(len(costs)))


@settings(max_examples=100, deadline=None)
@given(costs_lists, ranks, batch_sizes, pools)
def test_plan_shape_and_batch_size_limits(costs, world, batch, pool):
    plan = plan_batches(costs, world, batch, size_pool=pool)
    assert len(plan) == -(-len(costs) // (world * batch))
    for step in plan:
        assert len(step) == world
        counts = [len(rank) for rank in step]
        assert max(counts) <= batch
        assert max(counts) - min(counts) <= 1


@settings(max_examples=100, deadline=None)
@given(costs_lists, ranks, st.integers(2, 9), pools)
def test_no_empty_rank_when_enough_structures(costs, world, batch, pool):
    plan = plan_batches(costs, world, batch, size_pool=pool)
    if len(costs) >= world:
        assert all(len(rank) > 0 for step in plan for rank in step)


def test_fewer_structures_than_ranks_still_gives_every_rank_the_step():
    # every rank has an entry in the step (the ranks without a structure train and evaluate
    # on a padding-only batch: tests/train/test_every_rank_busy.py); no structure is repeated
    plan = plan_batches([5, 7], world_size=4, batch_size=3)
    assert len(plan) == 1
    assert len(plan[0]) == 4
    assert sorted(i for rank in plan[0] for i in rank) == [0, 1]


def test_empty_costs_give_empty_plan():
    assert plan_batches([], world_size=2, batch_size=4) == []


@settings(max_examples=50, deadline=None)
@given(costs_lists, ranks, batch_sizes, st.integers(0, 5), pools)
def test_plan_is_deterministic_given_seed_and_epoch(costs, world, batch, epoch, pool):
    first = plan_batches(costs, world, batch, seed=3, epoch=epoch, size_pool=pool)
    assert first == plan_batches(costs, world, batch, seed=3, epoch=epoch, size_pool=pool)


def test_epochs_and_seeds_shuffle_the_plan():
    costs = structure_costs(long_tailed_sizes(2000))
    base = plan_batches(costs, 4, 8, seed=0, epoch=0)
    assert base != plan_batches(costs, 4, 8, seed=0, epoch=1)
    assert base != plan_batches(costs, 4, 8, seed=1, epoch=0)


def test_balanced_plan_beats_random_and_paper_cv():
    costs = structure_costs(long_tailed_sizes(20_000))
    ours = load_cv(plan_batches(costs, 4, 32), costs).mean()
    no_pools = load_cv(plan_batches(costs, 4, 32, size_pool=None), costs).mean()
    random = load_cv(plan_random_batches(costs, 4, 32), costs).mean()
    assert random > 0.1
    assert ours < 0.03
    assert no_pools < 0.03


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="world_size"):
        plan_batches([1, 2], world_size=0, batch_size=1)
    with pytest.raises(ValueError, match="non-negative"):
        plan_batches([1, -2], world_size=1, batch_size=1)
    with pytest.raises(ValueError, match="1-D"):
        plan_batches([[1, 2]], world_size=1, batch_size=1)


def test_sampler_yields_its_rank_column_and_follows_set_epoch():
    costs = structure_costs(long_tailed_sizes(300))
    samplers = [BalancedBatchSampler(costs, 8, world_size=3, rank=r, seed=2) for r in range(3)]
    for sampler in samplers:
        sampler.set_epoch(4)
    plan = plan_batches(costs, 3, 8, seed=2, epoch=4)
    for rank, sampler in enumerate(samplers):
        assert list(sampler) == [step[rank] for step in plan]
        assert len(sampler) == len(plan)
    assert samplers[0].load_cv() < 0.05
