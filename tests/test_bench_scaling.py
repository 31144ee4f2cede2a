"""The scaling model of bench/bench_scaling.py: the ring all-reduce formula and the epoch
arithmetic it predicts from (bench/ is not a package: imported by path)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import scaling_model as model


def test_ring_allreduce_follows_the_stated_formula_per_link() -> None:
    size = 4 * 412_525
    assert model.ring_allreduce_seconds(size, 1) == 0.0
    nvlink = 2 * model.NVLINK["latency"] + size / model.NVLINK["bandwidth"]
    assert model.ring_allreduce_seconds(size, 2) == pytest.approx(nvlink)
    p = 64
    ib = 2 * (p - 1) * model.INFINIBAND["latency"]
    ib += 2 * (p - 1) / p * size / model.INFINIBAND["bandwidth"]
    assert model.ring_allreduce_seconds(size, p) == pytest.approx(ib)


def test_prediction_counts_steps_imbalance_and_allreduce() -> None:
    gpu = model.GpuModel("direct", fixed_s=1e-3, seconds_per_cost=1e-6)
    sampler = {
        1: {"batch": 10, "imbalance": 1.0, "mean_cost": 1000.0},
        4: {"batch": 10, "imbalance": 1.5, "mean_cost": 1000.0},
    }
    rows = model.predict("weak", sampler, gpu, message_bytes=4e6, n=1000)
    one, four = rows
    n_train = model.TRAIN_FRACTION * 1000
    assert one["epoch_min"] * 60 == pytest.approx(n_train / 10 * (1e-3 + 1e-3))
    step = 1e-3 + 1e-3 * 1.5 + model.ring_allreduce_seconds(4e6, 4)
    assert four["step_ms"] == pytest.approx(1e3 * step)
    assert four["epoch_min"] * 60 == pytest.approx(-(-n_train // 40) * step)
    assert one["efficiency"] == pytest.approx(1.0)
    assert model.bottleneck(four) == "fixed per-step overhead"  # 1 ms of 2.5 ms + all-reduce
    assert model.bottleneck(one) == "fixed per-step overhead"  # 1 of 2 ms: not compute-bound


def test_quick_keeps_the_structures_and_steps_given() -> None:
    import bench_scaling

    quick = bench_scaling.parse_args(["--quick"])
    assert (quick.structures, quick.steps) == (200_000, 3)
    given = bench_scaling.parse_args(["--quick", "--structures", "5000", "--steps", "2"])
    assert (given.structures, given.steps) == (5000, 2)
    full = bench_scaling.parse_args([])
    assert (full.structures, full.steps) == (1_580_395, 5)
