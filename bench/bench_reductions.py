"""Scatter sums: the model's ``scatter_sum`` against segment reductions on edges sorted by
destination (issue #14's "segment reductions instead of index_add scatters").

The two sums of every interaction block, on real index sets: an atom conv's messages summed
into their centre atoms (``Topology.edge_centre``) and a bond conv's angle messages summed
into their first bond (``Topology.angle_bond1``). Cases: LiMnO2 (8 atoms, the MD case) and a
batch of 16 varied crystals (bench_train_step.py's structures: seed 7, up to 108 atoms), 64
features as at the reference architecture. Ours is ``fastchgnet.model.layers.scatter_sum`` as
the model calls it, eager. The segment side is ``torch.segment_reduce(..., "sum",
lengths=...)`` on the same values already sorted by destination: the sort is done once, off
the clock, as if the graph were stored sorted. Both are timed forward and forward with
backward (the gradient of the values, as forces and training need), alternating, median.

    python bench/bench_reductions.py [--threads 2] [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from help_text import first_sentence
from torch import Tensor

from fastchgnet.data.batch import collate
from fastchgnet.data.graph import build_graph
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.model.layers import Topology, scatter_sum

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference"
FEATURES = 64


def median_us(fns: dict[str, Callable[[], object]], repeats: int, rounds: int = 9) -> dict:
    """Median microseconds a call of each of ``fns``, rounds alternating between them."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(10):
            fn()
    for r in range(rounds):
        for name in list(fns)[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            for _ in range(repeats):
                fns[name]()
            times[name].append((time.perf_counter() - start) / repeats * 1e6)
    return {name: statistics.median(t) for name, t in times.items()}


def compare(index: Tensor, size: int, repeats: int) -> dict:
    """Forward and forward+backward times of both sums of (len(index), FEATURES) values."""
    values = torch.randn(index.shape[0], FEATURES, requires_grad=True)
    order = torch.argsort(index, stable=True)
    lengths = torch.bincount(index, minlength=size)
    sorted_values = values.detach()[order].requires_grad_(True)
    grad = torch.randn(size, FEATURES)
    ours = scatter_sum(values, index, size)
    segment = torch.segment_reduce(sorted_values, "sum", lengths=lengths, axis=0)
    torch.testing.assert_close(segment, ours)  # the same sums

    def ours_forward() -> Tensor:
        with torch.no_grad():
            return scatter_sum(values, index, size)

    def segment_forward() -> Tensor:
        with torch.no_grad():
            return torch.segment_reduce(sorted_values, "sum", lengths=lengths, axis=0)

    def ours_both() -> tuple[Tensor, ...]:
        return torch.autograd.grad(scatter_sum(values, index, size), values, grad)

    def segment_both() -> tuple[Tensor, ...]:
        summed = torch.segment_reduce(sorted_values, "sum", lengths=lengths, axis=0)
        return torch.autograd.grad(summed, sorted_values, grad)

    forward = median_us({"ours": ours_forward, "segment": segment_forward}, repeats)
    both = median_us({"ours": ours_both, "segment": segment_both}, repeats)
    return {"forward": forward, "forward+backward": both}


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200, help="calls per timed round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = {}
    if REFERENCE.is_dir():
        from pymatgen.core import Structure

        batches["LiMnO2 (8 atoms)"] = [Structure.from_file(REFERENCE / "mp-18767-LiMnO2.cif")]
    batches["batch of 16 varied crystals"] = varied_structures(240, seed=7, max_atoms=108)[:16]
    print(f"torch {torch.__version__}, {args.threads} threads, {FEATURES} features; times in us")
    print(f"{'case':30s} {'sum':26s} {'rows':>12s} {'pass':>17s} {'ours':>8s} {'segment':>8s}"
          f" {'segment/ours':>12s}")  # fmt: skip
    for case, structures in batches.items():
        batch = collate([build_graph(s) for s in structures])
        topo = Topology.of(batch)
        sums = {
            "atom conv (edges -> atoms)": (topo.edge_centre, batch.atomic_numbers.shape[0]),
            "bond conv (angles -> bonds)": (topo.angle_bond1, topo.n_short_bonds),
        }
        for name, (index, size) in sums.items():
            for kind, t in compare(index, size, args.repeats).items():
                rows = f"{index.shape[0]}->{size}"
                print(
                    f"{case:30s} {name:26s} {rows:>12s} {kind:>17s} {t['ours']:8.1f}"
                    f" {t['segment']:8.1f} {t['segment'] / t['ours']:11.2f}x"
                )


if __name__ == "__main__":
    main()
