"""bench/buckets.py: several capacity buckets for balanced batches (a bench helper)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fastchgnet.data.sampler import plan_batches, structure_costs
from tests.data.test_sampler import long_tailed_sizes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from buckets import (
    assign_buckets,
    derive_capacities,
    padding_waste_per_capacity,
)


def test_every_batch_fits_a_capacity_and_waste_is_reported():
    sizes = long_tailed_sizes(5000)
    caps = derive_capacities(sizes, 16, 6, world_size=4)
    assert 2 <= len(caps) <= 7
    plan = plan_batches(structure_costs(sizes), 4, 16, epoch=9)
    buckets = assign_buckets(plan, sizes, caps)
    assert buckets.shape == (len(plan), 4)
    report = padding_waste_per_capacity(plan, sizes, caps)
    assert sum(r["batches"] for r in report) == sum(len(r) > 0 for s in plan for r in s)
    assert sum(r["real"] for r in report) == int(sizes.sum())
    assert all(r["padded"] >= 0 for r in report)


def test_overflow_capacity_fits_the_largest_structures():
    sizes = long_tailed_sizes(500)
    caps = derive_capacities(sizes, 4, 2)
    worst = np.argsort(-sizes[:, 2])[:4].tolist()
    assert assign_buckets([[worst]], sizes, caps)[0, 0] < len(caps)
