"""Packed plans: every structure once, every batch within the capacity, ranks balanced."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastchgnet.data.capacity import Capacity, packing_capacity, padding_waste
from fastchgnet.data.packing import PackedBatchSampler, plan_packed_batches
from fastchgnet.data.sampler import load_cv, structure_costs


def _sizes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    atoms = np.clip(np.round(rng.lognormal(np.log(12), 0.8, n)), 1, 200).astype(np.int64)
    bonds = (atoms * rng.uniform(20, 60, n)).astype(np.int64)
    angles = (bonds * rng.uniform(0, 8, n)).astype(np.int64)
    return np.stack([atoms, bonds, angles], axis=1)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 300),
    world_size=st.integers(1, 5),
    per_batch=st.integers(1, 16),
    seed=st.integers(0, 3),
    epoch=st.integers(0, 3),
)
def test_every_structure_once_and_every_batch_fits(n, world_size, per_batch, seed, epoch):
    sizes = _sizes(n, seed)
    capacity = packing_capacity(sizes, per_batch) if n else Capacity(4, 10, 10, 10)
    plan = plan_packed_batches(sizes, world_size, capacity, seed, epoch)
    used = sorted(i for step in plan for rank in step for i in rank)
    assert used == list(range(n))
    for step in plan:
        assert len(step) == world_size
        for rank in step:
            total = sizes[rank].sum(axis=0) if rank else np.zeros(3)
            assert len(rank) <= capacity.structures
            # one atom and one bond stay free for the padding structure
            assert total[0] < capacity.atoms
            assert total[1] < capacity.bonds
            assert total[2] <= capacity.angles


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 200),
    world_size=st.integers(1, 4),
    per_batch=st.integers(1, 12),
    seed=st.integers(0, 3),
)
def test_bond_graph_bonds_and_other_bonds_each_fit_their_own_slots(n, world_size, per_batch, seed):
    sizes = _sizes(n, seed)
    short = (sizes[:, 1] * np.random.default_rng(seed).uniform(0, 0.4, n)).astype(np.int64)
    sizes4 = np.concatenate([sizes, short[:, None]], axis=1)
    capacity = packing_capacity(sizes4, per_batch)
    assert capacity.short_bonds is not None
    assert capacity.short_bonds < capacity.bonds or not (sizes[:, 1] - short).any()
    plan = plan_packed_batches(sizes4, world_size, capacity, seed)
    assert sorted(i for step in plan for rank in step for i in rank) == list(range(n))
    for step in plan:
        for rank in step:
            if not rank:
                continue
            total = sizes4[rank].sum(axis=0)
            assert total[0] < capacity.atoms
            assert total[3] < capacity.short_bonds  # one bond-graph bond left for padding
            assert total[1] - total[3] <= capacity.bonds - capacity.short_bonds
            assert total[2] <= capacity.angles


def test_a_capacity_with_short_bonds_needs_their_counts():
    sizes = _sizes(20, 0)
    capacity = packing_capacity(np.concatenate([sizes, sizes[:, 1:2] // 4], axis=1), 4)
    with pytest.raises(ValueError, match="needs \\(N, 4\\) sizes"):
        plan_packed_batches(sizes, 1, capacity)


def test_plan_is_deterministic_given_seed_and_epoch():
    sizes = _sizes(500, 1)
    capacity = packing_capacity(sizes, 8)
    assert plan_packed_batches(sizes, 3, capacity, 5, 2) == plan_packed_batches(
        sizes, 3, capacity, 5, 2
    )
    assert plan_packed_batches(sizes, 3, capacity, 5, 2) != plan_packed_batches(
        sizes, 3, capacity, 5, 3
    )


def test_long_tailed_sizes_pack_with_little_padding_and_balanced_ranks():
    sizes = _sizes(20_000, 2)
    capacity = packing_capacity(sizes, 32)
    plan = plan_packed_batches(sizes, 4, capacity, epoch=1)
    waste = padding_waste(plan, sizes, capacity)["waste"]
    cv = load_cv(plan[:-1], structure_costs(sizes))  # the last step is the tail
    assert waste < 0.10
    assert cv.mean() < 0.03


def test_structure_larger_than_capacity_is_named():
    sizes = np.array([[4, 100, 100], [50, 100, 100]])
    with pytest.raises(ValueError, match=r"structure 1 .* exceeds the capacity"):
        plan_packed_batches(sizes, 1, Capacity(8, 20, 500, 500))


def test_sampler_yields_this_ranks_column():
    sizes = _sizes(400, 3)
    capacity = packing_capacity(sizes, 8)
    samplers = [PackedBatchSampler(sizes, capacity, world_size=2, rank=r) for r in (0, 1)]
    for sampler in samplers:
        sampler.set_epoch(4)
    plan = plan_packed_batches(sizes, 2, capacity, 0, 4)
    assert list(samplers[1]) == [step[1] for step in plan]
    assert len(samplers[0]) == len(plan)
