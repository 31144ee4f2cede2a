"""Training step on a CPU with several torch threads: the model's gathers and scatter sums in
the expanded-index form with inductor's kernels on every thread (ours,
``model.layers.parallel_cpu``, ``compile.capture.CPU_INDUCTOR_OPTIONS``) against the
index_select / index_add form with kernels built for one thread (before stop 23) and with
kernels on every thread (atomic scatter-adds); eager steps in both forms too. The same
batches, steps interleaved in one process.

    python bench/bench_kernel_threads.py [--threads 2] [--mode conservative] [--batch-size 16]

The batches are bench_train_step.py's (240 varied crystals, seed 7, up to 108 atoms, random
labels, one padded shape for 4 batches). The three graphs compile first (minutes on 2 cores).
``--partitioned-scatter`` adds a build of the index form with inductor's
``partitioned_scatter_enabled`` (per-thread scatter buffers instead of atomics).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from help_text import first_sentence


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
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
    from fastchgnet.numerics import flush_thread_team
    from fastchgnet.train.step import standalone_step

    flush_thread_team()  # as a training run's first step does
    structures = varied_structures(240, seed=7, max_atoms=108)
    labels = random_labels(structures, seed=1)
    graphs = [build_graph(s) for s in structures]
    order = np.random.default_rng(0).permutation(len(structures))
    b = args.batch_size
    _, capacity, batches = padded_batches(graphs, labels, order, b, 4, fit=True)
    ours = "ours: expanded form, all-thread kernels"
    variants = {
        ours: (True, capture.CPU_INDUCTOR_OPTIONS),
        "index form, one-thread kernels": (False, {"cpp.threads": 1}),
        "index form, all-thread kernels": (False, {}),
    }
    if args.partitioned_scatter:
        variants["index form, partitioned scatter"] = (False, {"partitioned_scatter_enabled": True})
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.mode}, batch {b}, "
        f"capacity {capacity}"
    )
    default_options = capture.CPU_INDUCTOR_OPTIONS

    def new_model() -> FastCHGNet:
        if args.mode == "conservative":
            return FastCHGNet.from_reference("0.3.0").train()
        torch.manual_seed(0)
        return FastCHGNet(forces="direct", coupled_updates=False).train()

    steps = {}  # name -> (expanded form?, step)
    try:
        for name, (expanded_form, options) in variants.items():
            capture.CPU_INDUCTOR_OPTIONS = options
            step = standalone_step(new_model(), compiled=True)
            start = time.perf_counter()
            try:
                with index_form(not expanded_form):  # the form is traced into the graph
                    step(*batches[0])
            except Exception as error:  # an inductor failure is a result here, not a crash
                print(f"  {name}: failed to build or run: {type(error).__name__}: {error}")
                continue
            print(f"  {name}: first step (trace + compile) {time.perf_counter() - start:.1f} s")
            steps[name] = (expanded_form, step)
    finally:
        capture.CPU_INDUCTOR_OPTIONS = default_options
    for expanded_form in (True, False):  # eager: the form is chosen at every call
        steps[f"eager, {'expanded' if expanded_form else 'index'} form"] = (
            expanded_form,
            standalone_step(new_model(), compiled=False),
        )
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for batch in batches:
            for name, (expanded_form, step) in steps.items():
                with index_form(not expanded_form):
                    start = time.perf_counter()
                    step(*batch)
                    times[name].append(time.perf_counter() - start)
    first = next(iter(times))
    for name, seen in times.items():
        median = statistics.median(seen)
        print(
            f"  {name:42s} median {median * 1e3:7.1f} ms/step "
            f"({statistics.median(times[first]) / median:.2f}x of ours)"
        )


@contextlib.contextmanager
def index_form(on: bool) -> Iterator[None]:
    """While ``on``, the model's gathers and scatter sums take the index_select / index_add
    form whatever the thread count (``model.layers.parallel_cpu`` patched)."""
    from fastchgnet.model import layers

    chosen = layers.parallel_cpu
    if on:
        layers.parallel_cpu = lambda values: False
    try:
        yield
    finally:
        layers.parallel_cpu = chosen


if __name__ == "__main__":
    main()
