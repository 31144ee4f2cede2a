"""Captured training step on a CPU with several torch threads: inductor's C++ kernels built
for one thread (ours, ``compile.capture.CPU_INDUCTOR_OPTIONS``) against built for every
thread (inductor's default: OpenMP loops, atomic scatter-adds), the same batches, steps
interleaved in one process.

    python bench/bench_kernel_threads.py [--threads 2] [--mode conservative] [--batch-size 16]

The batches are bench_train_step.py's (240 varied crystals, seed 7, up to 108 atoms, random
labels, one padded shape for 4 batches). Both graphs compile first (minutes on 2 cores; the
one-thread graph comes from inductor's cache when bench_train_step.py built it before).
``--partitioned-scatter`` adds a third build with inductor's ``partitioned_scatter_enabled``
(per-thread scatter buffers instead of atomics).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=["conservative", "direct"], default="conservative")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--partitioned-scatter", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bench_train_step import padded_batches, random_labels

    from fastchgnet import FastCHGNet
    from fastchgnet.compile import capture
    from fastchgnet.data.graph import build_graph
    from fastchgnet.data.random_crystals import varied_structures
    from fastchgnet.numerics import start_thread_team_flushing
    from fastchgnet.train.step import standalone_step

    start_thread_team_flushing()  # as a training run does
    structures = varied_structures(240, seed=7, max_atoms=108)
    labels = random_labels(structures, seed=1)
    graphs = [build_graph(s) for s in structures]
    order = np.random.default_rng(0).permutation(len(structures))
    b = args.batch_size
    _, capacity, batches = padded_batches(graphs, labels, order, b, 4)
    variants = {"one-thread kernels (ours)": {"cpp.threads": 1}, "all-thread kernels": {}}
    if args.partitioned_scatter:
        variants["all-thread, partitioned scatter"] = {"partitioned_scatter_enabled": True}
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.mode}, batch {b}, "
        f"capacity {capacity}"
    )
    default_options = capture.CPU_INDUCTOR_OPTIONS
    steps = {}
    try:
        for name, options in variants.items():
            capture.CPU_INDUCTOR_OPTIONS = options
            if args.mode == "conservative":
                model = FastCHGNet.from_reference("0.3.0")
            else:
                torch.manual_seed(0)
                model = FastCHGNet(forces="direct", coupled_updates=False)
            step = standalone_step(model.train(), compiled=True)
            start = time.perf_counter()
            try:
                step(*batches[0])
            except Exception as error:  # an inductor failure is a result here, not a crash
                print(f"  {name}: failed to build or run: {type(error).__name__}: {error}")
                continue
            print(f"  {name}: first step (trace + compile) {time.perf_counter() - start:.1f} s")
            steps[name] = step
    finally:
        capture.CPU_INDUCTOR_OPTIONS = default_options
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for batch in batches:
            for name, step in steps.items():
                start = time.perf_counter()
                step(*batch)
                times[name].append(time.perf_counter() - start)
    first = next(iter(times))
    for name, seen in times.items():
        median = statistics.median(seen)
        print(
            f"  {name:34s} median {median * 1e3:7.1f} ms/step "
            f"({statistics.median(times[first]) / median:.2f}x of ours)"
        )


if __name__ == "__main__":
    main()
