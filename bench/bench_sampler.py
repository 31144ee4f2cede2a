"""Load balance and padding of the batch plan on an MPtrj-like long-tailed size distribution.

Prints the coefficient of variation (CV = std / mean) of per-rank cost (atoms + bonds + angles)
per step, averaged over steps, for our plan, our plan without size pools, and a random
(DistributedSampler-like) plan, beside the paper's numbers (0.186 random, 0.064 theirs, W=4,
b=32); then padding waste (padded / real entries) per capacity bucket; then the packed plan
(``plan_packed_batches``: every rank batch filled up to one capacity) with its CV and waste.

    python bench/bench_sampler.py [--n 200000] [--world-size 4] [--batch-size 32] [--buckets 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from buckets import derive_capacities, padding_waste_per_capacity
from help_text import first_sentence

from fastchgnet.data.capacity import packing_capacity, padding_waste
from fastchgnet.data.packing import plan_packed_batches
from fastchgnet.data.sampler import load_cv, plan_batches, plan_random_batches, structure_costs


def mptrj_like_sizes(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) atoms, bonds, angles: lognormal atoms in 1..444, bonds ~ atoms x U(20, 60),
    angles ~ bonds x U(2, 8): most structures small, a long tail of large ones."""
    rng = np.random.default_rng(seed)
    atoms = np.clip(np.round(rng.lognormal(np.log(20), 0.9, n)), 1, 444).astype(np.int64)
    bonds = (atoms * rng.uniform(20, 60, n)).astype(np.int64)
    angles = (bonds * rng.uniform(2, 8, n)).astype(np.int64)
    return np.stack([atoms, bonds, angles], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--world-size", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--buckets", type=int, nargs="+", default=[4, 8, 16, 32])
    args = parser.parse_args()
    sizes = mptrj_like_sizes(args.n)
    costs = structure_costs(sizes)
    w, b = args.world_size, args.batch_size
    print(
        f"{args.n} structures, atoms median {np.median(sizes[:, 0]):.0f} max {sizes[:, 0].max()}"
        f", W={w}, b={b}"
    )
    plans = {
        "ours (size pools + LPT + swaps)": lambda e: plan_batches(costs, w, b, epoch=e),
        "ours, random global batches": lambda e: plan_batches(costs, w, b, epoch=e, size_pool=None),
        "random (DistributedSampler-like)": lambda e: plan_random_batches(costs, w, b, epoch=e),
    }
    for name, make in plans.items():
        start = time.perf_counter()
        plan = make(1)
        seconds = time.perf_counter() - start
        cv = load_cv(plan, costs)
        print(
            f"  CV {name:34s} mean {cv.mean():.4f}  p99 {np.quantile(cv, 0.99):.4f}  "
            f"max {cv.max():.4f}  (plan {seconds:.2f} s)"
        )
    print("  paper (W=4, b=32): random 0.186, load-balance sampler 0.064; our goal < 0.03")
    capacity = packing_capacity(sizes, b)
    start = time.perf_counter()
    packed = plan_packed_batches(sizes, w, capacity, epoch=1)
    seconds = time.perf_counter() - start
    cv = load_cv(packed[:-1], costs)  # the last step holds the epoch's tail
    waste = padding_waste(packed, sizes, capacity)["waste"]
    counts = np.array([len(r) for step in packed for r in step])
    print(
        f"packed batches, one capacity {capacity}:\n"
        f"  CV mean {cv.mean():.4f}  p99 {np.quantile(cv, 0.99):.4f}  max {cv.max():.4f}, "
        f"padding waste {waste:.3f}, structures per rank batch mean {counts.mean():.1f} "
        f"(min {counts.min()}, max {counts.max()}), plan {seconds:.2f} s"
    )
    plan = plan_batches(costs, w, b, epoch=7)  # an epoch the capacities were not derived from
    for n_buckets in args.buckets:
        capacities = derive_capacities(sizes, b, n_buckets, world_size=w)
        report = padding_waste_per_capacity(plan, sizes, capacities)
        total = sum(r["padded"] for r in report) / sum(r["real"] for r in report)
        print(f"padding waste with {n_buckets} buckets (+1 overflow): total {total:.3f}")
        for r in report:
            c = r["capacity"]
            print(
                f"    atoms {c.atoms:7d} bonds {c.bonds:8d} angles {c.angles:9d}: "
                f"{r['batches']:6d} batches, waste {r['waste']:.3f}"
            )


if __name__ == "__main__":
    main()
