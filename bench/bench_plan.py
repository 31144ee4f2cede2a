"""Time of the samplers' epoch plans at MPtrj size, and the wait at an epoch boundary.

For 1.58M MPtrj-like long-tailed sizes (bench_sampler.mptrj_like_sizes, plus bond-graph bonds
as training packs them) prints, at 8 and 32 ranks: the time of one packed plan
(``plan_packed_batches``) and one balanced plan (``plan_batches``), and the wait between the
last batch of one epoch and the first of the next through ``EpochBatches`` (which plans the
next epoch in the background) while a simulated epoch of ``--epoch-seconds`` runs.

    python bench/bench_plan.py [--n 1580000] [--world-sizes 8 32] [--epoch-seconds 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampler import mptrj_like_sizes
from help_text import first_sentence

from fastchgnet.data.capacity import packing_capacity
from fastchgnet.data.packing import PackedBatchSampler
from fastchgnet.data.sampler import BalancedBatchSampler, structure_costs
from fastchgnet.train.loading import EpochBatches


def boundary_wait(sampler, n: int, epoch_seconds: float) -> tuple[float, float]:
    """(seconds to the first batch of epoch 0, seconds between the last batch of epoch 0 and
    the first of epoch 1) for rank 0, with each step of epoch 0 taking its share of
    ``epoch_seconds``."""
    batches = EpochBatches(sampler, np.arange(n), epoch=0)
    start = time.perf_counter()
    iterator = iter(batches)
    next(iterator)
    first = time.perf_counter() - start
    step = epoch_seconds / max(1, len(batches))
    deadline = time.perf_counter()
    for _ in iterator:  # a steady step rhythm, as training keeps
        deadline += step
        time.sleep(max(0.0, deadline - time.perf_counter()))
    end = time.perf_counter()
    batches.set_epoch(1)
    next(iter(batches))
    return first, time.perf_counter() - end


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--n", type=int, default=1_580_000)
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epoch-seconds", type=float, default=20.0)
    args = parser.parse_args()
    sizes = mptrj_like_sizes(args.n)
    rng = np.random.default_rng(1)
    short = (sizes[:, 1] * rng.uniform(0.1, 0.4, args.n)).astype(np.int64)
    sizes4 = np.concatenate([sizes, short[:, None]], axis=1)
    capacity = packing_capacity(sizes4, args.batch_size)
    costs = structure_costs(sizes)
    print(f"{args.n} structures, b={args.batch_size}, packed capacity {capacity}")
    for world in args.world_sizes:
        samplers = {
            "packed": PackedBatchSampler(sizes4, capacity, world_size=world),
            "balanced": BalancedBatchSampler(costs, args.batch_size, world_size=world),
        }
        for name, sampler in samplers.items():
            start = time.perf_counter()
            plan = sampler._make_plan(5)
            seconds = time.perf_counter() - start
            first, wait = boundary_wait(sampler, args.n, args.epoch_seconds)
            print(
                f"W={world:3d} {name:8s}: plan {seconds:5.2f} s ({len(plan)} steps); "
                f"first batch of the run {first:5.2f} s; epoch boundary wait {wait * 1e3:7.1f} ms "
                f"(epoch of {args.epoch_seconds:.0f} s)"
            )


if __name__ == "__main__":
    main()
