"""Training step side by side: the reference chgnet, matgl's CHGNet and ours, same batches.

    python bench/bench_matgl.py [--threads 1 2] [--batches 12] [--batch-size 16] [--repeats 3]
                                [--packed]

The same ``--batches`` batches of ``--batch-size`` varied crystals
(``fastchgnet.data.random_crystals.varied_structures``, seed 7, up to ``--max-atoms`` atoms:
about 234 atoms a batch by default) with the same random labels for every side; with
``--packed``, the same structures in the batches compiled training packs instead (one capacity,
low padding; ``packed_plan``):

    reference       chgnet 0.3.0 with its Trainer's step (CombinedLoss, Adam), as in
                    bench/bench_train_step.py (its helpers)
    matgl           matgl's CHGNet at chgnet 0.3.0's sizes, random weights, its own
                    PotentialLightningModule step (bench/matgl_side.py)
    ours ...        FastCHGNet conservative (0.3.0 weights) and direct, eager and captured,
                    through THE training step (``train.step.standalone_step``: TrainStep, the
                    step launcher/train.py runs); captured on batches padded to one
                    capacity, eager on unpadded ones, as launcher/train.py collates each

Graph building and collation are data loading, outside the timing for every side. Denormals
are flushed for all sides, for the whole run (``fastchgnet.numerics.flush_denormals`` entered
before the first parallel op, so every OpenMP thread starts flushing). Each thread count runs
in its own process (``torch.set_num_threads``; inductor specialises its kernels on it). Every
side runs every batch in turn, ``--repeats`` passes, after a warm-up step (and the captured
steps' compilation, reported apart). Prints the median seconds per step of each side and its
ratio against the reference and against matgl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import packed_plan, padded_entries, random_labels, reference_step, timed
from help_text import first_sentence
from matgl_side import matgl_batch, matgl_graphs, matgl_step, matgl_training_parts

OURS = ["conservative eager", "conservative captured", "direct eager", "direct captured"]


def build_sides(args: argparse.Namespace) -> dict:
    """Each side's step as ``run(k)`` for batch k, all batches built (untimed)."""
    from fastchgnet import FastCHGNet
    from fastchgnet.cli.profile import reference_training_parts
    from fastchgnet.data.capacity import Counts, tight_capacity
    from fastchgnet.data.graph import build_graph
    from fastchgnet.data.random_crystals import varied_structures
    from fastchgnet.train.loading import PaddedCollate, collate_items
    from fastchgnet.train.step import dynamic_sizes, standalone_step

    n = args.batches * args.batch_size
    structures = varied_structures(n, seed=7, max_atoms=args.max_atoms)
    labels = random_labels(structures, seed=1)
    our_graphs = [build_graph(s) for s in structures]
    packing = packed_plan(our_graphs, args.batch_size) if args.packed else None
    if packing is None:
        chunks = [
            range(k * args.batch_size, (k + 1) * args.batch_size) for k in range(args.batches)
        ]
    else:
        chunks = packing[0]
        args.batches = len(chunks)
    atoms = [sum(len(structures[i]) for i in c) for c in chunks]
    counts = [len(c) for c in chunks]
    print(f"{args.batches} batches of {min(counts)}-{max(counts)} structures: atoms per batch mean "
          f"{np.mean(atoms):.0f}, min {min(atoms)}, max {max(atoms)}", flush=True)  # fmt: skip
    sides = {}
    if "reference" in args.sides:
        reference, criterion, optimizer = reference_training_parts(args.lr)
        ref_graphs = [reference.graph_converter(s) for s in structures]
        f32 = torch.float32
        ref_batches = [
            (
                [ref_graphs[i] for i in c],
                {
                    "e": torch.tensor([labels[i].energy_per_atom for i in c], dtype=f32),
                    "f": [torch.tensor(labels[i].forces, dtype=f32) for i in c],
                    "s": [torch.tensor(labels[i].stress, dtype=f32) for i in c],
                    "m": [torch.tensor(labels[i].magmoms, dtype=f32) for i in c],
                },
            )
            for c in chunks
        ]
        sides["reference"] = lambda k, b=ref_batches: reference_step(
            reference, optimizer, criterion, *b[k]
        )
    if "matgl" in args.sides:
        module, matgl_optimizer = matgl_training_parts(args.lr)
        graphs = matgl_graphs(module, structures)
        matgl_batches = [
            matgl_batch([graphs[i] for i in c], [labels[i] for i in c]) for c in chunks
        ]
        sides["matgl"] = lambda k, b=matgl_batches: matgl_step(module, matgl_optimizer, b[k], k)
    ours = [name for name in OURS if name in args.sides]
    if ours:
        capacity = (
            tight_capacity([[our_graphs[i] for i in c] for c in chunks])
            if packing is None
            else packing[1]
        )
        real = sum(Counts.of([our_graphs[i] for i in c]).entries for c in chunks)
        # as CPU training's captured step takes them: padded to the capacity in structures and
        # short bonds only (train.step.dynamic_sizes), or to the whole capacity
        collate = PaddedCollate(capacity, fit=dynamic_sizes("cpu"))
        padded = [collate([(our_graphs[i], labels[i]) for i in c]) for c in chunks]
        waste = sum(padded_entries(x) for x, _ in padded) / real - 1
        print(f"ours: one capacity for all batches {capacity}; the captured steps' padding "
              f"waste {waste:.1%} (padded entries per real one)", flush=True)  # fmt: skip
        # eager steps take batches as they come, as launcher/train.py collates them when it
        # does not compile (data.batching auto -> balanced): no padding
        plain = [collate_items([(our_graphs[i], labels[i]) for i in c]) for c in chunks]
    for name in ours:
        mode, kind = name.split()
        if mode == "conservative":
            model = FastCHGNet.from_reference("0.3.0")
        else:
            model = FastCHGNet(forces="direct", coupled_updates=False)
        model.train()
        step = standalone_step(model, compiled=kind == "captured", lr=args.lr)
        ours_batches = padded if kind == "captured" else plain
        sides[f"ours {name}"] = lambda k, s=step, b=ours_batches: s(*b[k])
    return sides


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Median s/step of every side at ``args.threads[0]`` threads, in this process."""
    from fastchgnet.numerics import flush_denormals

    torch.set_num_threads(args.threads[0])
    warnings.filterwarnings("ignore")
    with flush_denormals() as flushing:  # before any parallel op: every OpenMP thread flushes
        sides = build_sides(args)
        print(f"{torch.get_num_threads()} threads, denormals flushed: {flushing}", flush=True)
        for name, run in sides.items():
            if "captured" in name:
                print(f"  {name}: first step (trace + compile) {timed(lambda r=run: r(0)):.1f} s",
                      flush=True)  # fmt: skip
        for run in sides.values():  # warm-up (the captured steps: a second call)
            run(0)
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.repeats):
            for k in range(args.batches):
                for name, run in sides.items():
                    times[name].append(timed(lambda r=run, k=k: r(k)))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print_table({args.threads[0]: medians})
    return medians


def print_table(results: dict[int, dict[str, float]]) -> None:
    """Median s/step per side and thread count, with ratios to the reference and to matgl."""
    print(f"\n{'median s/step':26s}" + "".join(
        f"{f'{t} thr':>8s} {'vs ref':>7s} {'vs matgl':>8s}" for t in results))  # fmt: skip
    names = list(next(iter(results.values())))
    for name in names:
        row = f"{name:26s}"
        for medians in results.values():
            s = medians[name]
            ref = medians.get("reference", float("nan")) / s
            matgl = medians.get("matgl", float("nan")) / s
            row += f"{s:8.3f} {ref:6.2f}x {matgl:7.2f}x"
        print(row)
    print("(vs: how many times faster than that side; shared machine, timings vary)")


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-atoms", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the batches")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument(
        "--sides", nargs="+", default=["reference", "matgl", *OURS],
        help="any of: reference matgl " + " ".join(f"'{n}'" for n in OURS),
    )  # fmt: skip
    parser.add_argument(
        "--packed", action="store_true",
        help="every side gets the batches compiled training packs (data.batching packed: "
        "about --batch-size structures each, one capacity, low padding) instead of "
        "--batches fixed chunks of --batch-size padded to the largest",
    )  # fmt: skip
    parser.add_argument("--json", help=argparse.SUPPRESS)  # a worker's result file
    args = parser.parse_args()
    if len(args.threads) == 1:
        medians = measure(args)
        if args.json:
            Path(args.json).write_text(json.dumps(medians))
        return
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for threads in args.threads:  # one process per thread count
            out = Path(scratch) / f"{threads}.json"
            argv = [a for a in sys.argv[1:]]
            cut = argv.index("--threads") if "--threads" in argv else None
            if cut is not None:  # drop the list of thread counts
                end = cut + 1
                while end < len(argv) and not argv[end].startswith("--"):
                    end += 1
                del argv[cut:end]
            cmd = [sys.executable, __file__, *argv, "--threads", str(threads), "--json", str(out)]
            print(f"\n=== {threads} thread(s) ===", flush=True)
            subprocess.run(cmd, check=True)
            results[threads] = json.loads(out.read_text())
    print("\n=== all thread counts ===")
    print_table(results)


if __name__ == "__main__":
    main()
