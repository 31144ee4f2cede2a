"""Training step and inference, FastCHGNet vs the reference chgnet, same batches, same run.

Training step = forward with energy, forces, stress, magmoms; Huber loss (prefactors 2, 1.5,
0.1, 0.1, delta 0.1); backward; Adam step. The reference runs chgnet's CHGNet (0.3.0 weights)
with chgnet.trainer.trainer.CombinedLoss on its own graphs, exactly as its Trainer does; ours
runs conservative (0.3.0 weights, same maths) and direct (heads, decoupled updates) modes,
eager and compiled. As launcher/train.py feeds them: eager steps take each batch as it is
(unpadded), compiled steps take it padded to one capacity per batch size (the tight shape the
batches share; its padding waste is printed). Random labels, the same for both. Graph
building and collation are data loading, outside the timing for both (the reference's
per-structure batching inside its forward is timed, as it is part of its forward).

Prints, per batch size and mode: median step time per batch, structures/s and the ratio to the
reference; aten operators dispatched per step; peak memory per step above the step's entry
(CPU: the allocator's peak of live tensor bytes from torch.profiler memory events, and the
process RSS; GPU: torch.cuda.max_memory_allocated); then single-structure inference (e, f, s, m)
for LiMnO2 and Li9Co7O16 with the compiled model against the reference's predict_structure.

    python bench/bench_train_step.py [--batch-sizes 16 32] [--batches 4] [--repeats 5]

``--packed`` gives every side the batches compiled training packs (as bench_matgl.py
``--packed``) instead of fixed batches padded to the largest. ``--precisions float32 bf16``
times each of our steps in both arithmetics (``FastCHGNet.set_precision``) side by side and
adds the bf16 accuracy table: pretrained predictions in bf16 against float32.
``--no-reference`` times our side only (e.g. ``--batch-sizes 64``: the reference's batch-64
step needs more than this 24 GB machine has) and prints no ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import statistics
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from help_text import first_sentence

from fastchgnet.model.precision import PRECISIONS

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference"
CIFS = {"LiMnO2": "mp-18767-LiMnO2.cif", "Li9Co7O16": "mp-1175469-Li9Co7O16.cif"}


def random_labels(structures: list, seed: int) -> list[SimpleNamespace]:
    """Energy (eV/atom), forces (eV/Å), stress (GPa), magmoms (μB) of plausible scale."""
    rng = np.random.default_rng(seed)
    return [
        SimpleNamespace(
            energy_per_atom=float(rng.normal(-5, 1)),
            forces=rng.normal(0, 0.5, size=(len(s), 3)),
            stress=rng.normal(0, 1, size=(3, 3)),
            magmoms=np.abs(rng.normal(0, 1, size=len(s))),
        )
        for s in structures
    ]


def reference_step(model, optimizer, criterion, graphs, targets):
    """One step of chgnet's Trainer._train loop body."""
    optimizer.zero_grad()
    prediction = model(graphs, task="efsm")
    loss = criterion(targets, prediction)["loss"]
    loss.backward()
    optimizer.step()
    return loss


def ratio(value: float, width: int) -> str:
    """``value`` as "2.50x" right-aligned in ``width``, or "-" when there is none (NaN)."""
    return f"{'-' if math.isnan(value) else f'{value:.2f}x':>{width}s}"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bf16_accuracy(structures: list, device: str) -> None:
    """Pretrained CHGNet 0.3.0 weights, eager prediction (e, f, s, m) of ``structures`` in
    float32 and in bf16: the seconds of each (sides interleaved, median of 3) and the mean
    absolute difference of bf16 from float32 (the float32 model is the reference
    implementation to round-off)."""
    from fastchgnet import FastCHGNet
    from fastchgnet.model.potential import predict_structures

    model = FastCHGNet.from_reference("0.3.0").to(device).eval()
    results, seconds = {}, {"float32": [], "bf16": []}
    for _ in range(3):
        for precision in seconds:
            model.set_precision(precision)
            start = time.perf_counter()
            results[precision] = predict_structures(model, structures)
            seconds[precision].append(time.perf_counter() - start)
    scale = {"e": 1e3, "f": 1e3, "s": 1.0, "m": 1.0}
    mae = {
        key: float(
            np.mean(
                np.concatenate(
                    [
                        np.abs(np.ravel(b[key]) - np.ravel(a[key]))
                        for a, b in zip(results["float32"], results["bf16"], strict=True)
                    ]
                )
            )
            * scale[key]
        )
        for key in scale
    }
    full, mixed = (statistics.median(seconds[p]) for p in ("float32", "bf16"))
    print(
        f"\nbf16 against float32, CHGNet 0.3.0 weights, eager prediction (e, f, s, m) of "
        f"{len(structures)} structures in batches of 16: float32 {full:.2f} s, bf16 "
        f"{mixed:.2f} s ({full / mixed:.2f}x); mean |bf16 - float32|: e {mae['e']:.2f} meV/atom, "
        f"f {mae['f']:.2f} meV/Å, s {mae['s']:.4f} GPa, m {mae['m']:.4f} μB"
    )


def packed_plan(graphs: list, batch_size: int) -> tuple[list[list[int]], object]:
    """Batches of ``graphs`` as compiled training packs them (``data.batching`` "packed", one
    rank): the plan's batches (structure indices) and their one capacity."""
    from fastchgnet.data.capacity import Counts, packing_capacity
    from fastchgnet.data.packing import plan_packed_batches

    counts = [Counts.of([g]) for g in graphs]
    sizes = np.array([[c.atoms, c.short_bonds + c.long_bonds, c.angles, c.short_bonds]
                      for c in counts])  # fmt: skip
    capacity = packing_capacity(sizes, batch_size)
    plan = plan_packed_batches(sizes, 1, capacity, seed=0)
    return [step[0] for step in plan if step[0]], capacity


def padded_entries(batch) -> int:
    """Atoms + bonds + angles of a padded GraphBatch (its shapes)."""
    return batch.atomic_numbers.shape[0] + batch.bond_atoms.shape[0] + batch.angle_edges.shape[0]


def padded_batches(
    graphs: list,
    labels: list,
    order: np.ndarray,
    b: int,
    n: int,
    packed: bool = False,
    fit: bool = False,
):
    """(chunks, capacity, padded): ``n`` batches of ``b`` structures taken in ``order``, their
    one tight capacity, and our padded (GraphBatch, LabelBatch) pairs at it (``fit``: at their
    own sizes within it, as CPU training's captured step takes them,
    ``train.loading.PaddedCollate``). ``packed``: the same ``n * b`` structures in the batches
    compiled training packs (``packed_plan``: about ``b`` structures each, at packing's one
    capacity)."""
    from fastchgnet.data.capacity import tight_capacity
    from fastchgnet.train.loading import PaddedCollate

    if packed:
        chosen = order[: n * b]
        plan, capacity = packed_plan([graphs[i] for i in chosen], b)
        chunks = [chosen[np.asarray(step)] for step in plan]
    else:
        chunks = [order[k * b : (k + 1) * b] for k in range(n)]
        capacity = tight_capacity([[graphs[i] for i in c] for c in chunks])
    collate = PaddedCollate(capacity, fit=fit)
    padded = [collate([(graphs[i], labels[i]) for i in c]) for c in chunks]
    return chunks, capacity, padded


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--structures", type=int, default=240)
    parser.add_argument("--max-atoms", type=int, default=108)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--batches", type=int, default=4, help="batches per batch size")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the batches")
    parser.add_argument("--modes", nargs="+", default=["conservative", "direct"])
    parser.add_argument("--inference-repeats", type=int, default=30)
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument(
        "--reference-flush-denormals",
        action="store_true",
        help="run the reference with denormals flushed too (ours always flushes; see "
        "fastchgnet.numerics)",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        default=["float32"],
        help="our model's arithmetic (FastCHGNet.set_precision), each timed side by side; "
        "with bf16 the table of bf16 against float32 predictions follows",
    )
    parser.add_argument(
        "--accuracy-structures",
        type=int,
        default=96,
        help="structures of the bf16 accuracy table (with --precisions ... bf16)",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="our side only, no ratios (batch sizes the reference cannot fit in memory)",
    )
    parser.add_argument(
        "--packed",
        action="store_true",
        help="every side gets the same --batches x batch-size structures in the batches "
        "compiled training packs (data.batching packed: about batch-size structures each, "
        "one capacity, little padding) instead of fixed batches padded to the largest",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared, loaded CPU, OpenMP threads spinning against other "
        "processes made every step several times slower)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pymatgen.core import Structure

    from fastchgnet import FastCHGNet
    from fastchgnet.cli.profile import reference_training_parts
    from fastchgnet.data.capacity import Counts
    from fastchgnet.data.graph import build_graph
    from fastchgnet.data.random_crystals import varied_structures
    from fastchgnet.numerics import flush_denormals
    from fastchgnet.profiling.counters import count_ops
    from fastchgnet.profiling.memory import PeakMemory, exact_rss
    from fastchgnet.train.loading import collate_items
    from fastchgnet.train.step import dynamic_sizes, standalone_step

    torch.manual_seed(0)
    reference, criterion, ref_optimizer = reference_training_parts()
    structures = varied_structures(args.structures, seed=7, max_atoms=args.max_atoms)
    sizes = np.array([len(s) for s in structures])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, shared machine: "
        f"timings are medians of {args.repeats} interleaved passes"
    )
    print(
        f"{len(structures)} structures, atoms min {sizes.min()} median {int(np.median(sizes))} "
        f"p90 {int(np.percentile(sizes, 90))} max {sizes.max()}"
    )
    labels = random_labels(structures, seed=1)
    ref_graphs = [reference.graph_converter(s) for s in structures]
    our_graphs = [build_graph(s) for s in structures]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    order = np.random.default_rng(0).permutation(len(structures))

    results = []
    for b in args.batch_sizes:
        chunks, capacity, padded = padded_batches(
            our_graphs, labels, order, b, args.batches, args.packed, dynamic_sizes(device)
        )
        n_structures = sum(len(c) for c in chunks)
        ref_batches = [
            (
                [ref_graphs[i] for i in c],
                {
                    "e": torch.tensor([labels[i].energy_per_atom for i in c], dtype=torch.float32),
                    "f": [torch.tensor(labels[i].forces, dtype=torch.float32) for i in c],
                    "s": [torch.tensor(labels[i].stress, dtype=torch.float32) for i in c],
                    "m": [torch.tensor(labels[i].magmoms, dtype=torch.float32) for i in c],
                },
            )
            for c in chunks
        ]
        real = sum(int(sizes[c].sum()) for c in chunks) / len(chunks)
        entries = sum(Counts.of([our_graphs[i] for i in c]).entries for c in chunks)
        waste = sum(padded_entries(x) for x, _ in padded) / entries - 1
        print(f"\nbatch size {b}{' (packed)' if args.packed else ''}: {len(chunks)} batches of "
              f"{min(map(len, chunks))}-{max(map(len, chunks))} structures, capacity {capacity} "
              f"(mean real atoms {real:.0f}); the compiled steps' padding waste {waste:.1%} "
              "(padded entries per real one)")  # fmt: skip
        # eager training collates batches as they are (launcher/train.py without compile)
        plain = [collate_items([(our_graphs[i], labels[i]) for i in c]) for c in chunks]

        def run_reference(k: int, rb: list = ref_batches) -> None:
            if args.reference_flush_denormals:
                with flush_denormals():
                    reference_step(reference, ref_optimizer, criterion, *rb[k])
            else:
                reference_step(reference, ref_optimizer, criterion, *rb[k])

        runners = {} if args.no_reference else {"reference": run_reference}
        for mode, precision in itertools.product(args.modes, args.precisions):
            if mode == "conservative":
                model = FastCHGNet.from_reference("0.3.0")
            else:
                torch.manual_seed(0)
                model = FastCHGNet(forces="direct", coupled_updates=False)
            model.to(device).train().set_precision(precision)
            kinds = ["eager"] + ([] if args.no_compile else ["compiled"])
            for kind in kinds:
                name = f"{mode} {kind}" + ("" if precision == "float32" else f" {precision}")
                step = standalone_step(model, compiled=kind == "compiled")
                chosen = padded if kind == "compiled" else plain
                batches = [(x.to(device), y.to(device)) for x, y in chosen]
                runners[name] = lambda k, s=step, bs=batches: s(*bs[k])
                if kind == "compiled":
                    captured = step.captured
                    t = timed(lambda s=step, bs=batches: s(*bs[0]))
                    print(
                        f"  {name}: first step (trace + compile) {t:.1f} s, "
                        f"graphs {captured.stats.graphs}, recompiles {captured.stats.recompiles}"
                    )
        for fn in runners.values():  # warm-up
            fn(0)
        times = {name: [] for name in runners}
        for _ in range(args.repeats):
            for k in range(len(chunks)):
                for name, fn in runners.items():
                    times[name].append((k, timed(lambda f=fn, k=k: f(k))))
        memory, rss, ops = {}, {}, {}
        for name, fn in runners.items():
            ops[name] = count_ops(lambda f=fn: f(0)).aten_ops
        with exact_rss():
            for name, fn in runners.items():
                fn(0)  # settle the allocator in this mode
                with PeakMemory(device) as peak:
                    fn(0)
                memory[name], rss[name] = peak.tensor_peak_mib, peak.peak_mib
        medians = {
            name: sum(statistics.median([t for kk, t in ts if kk == k]) for k in range(len(chunks)))
            for name, ts in times.items()
        }
        # without the reference, the ratios print as "-"
        ref_rate = n_structures / medians.get("reference", math.nan)
        ref_ops, ref_mem = ops.get("reference", math.nan), memory.get("reference", math.nan)
        print(
            f"  {'':28s} {'ms/step':>9s} {'struct/s':>9s} {'speedup':>8s} {'aten ops':>9s} "
            f"{'fewer':>7s} {'peak MiB':>9s} {'lower':>6s} {'RSS MiB':>8s}"
        )
        for name in runners:
            rate = n_structures / medians[name]
            print(
                f"  {name:28s} {medians[name] / len(chunks) * 1e3:9.1f} {rate:9.1f} "
                f"{ratio(rate / ref_rate, 8)} {ops[name]:9.0f} "
                f"{ratio(ref_ops / max(ops[name], 1), 7)} {memory[name]:9.1f} "
                f"{ratio(ref_mem / max(memory[name], 1e-3), 6)} {rss[name]:8.1f}"
            )
            results.append((b, name, rate / ref_rate, ops[name], memory[name]))

    if "bf16" in args.precisions:
        bf16_accuracy(structures[: args.accuracy_structures], device)
    if args.no_reference:
        return
    kind = "eager" if args.no_compile else "compiled"
    print(f"\nsingle-structure inference (e, f, s, m), {kind} conservative model, median ms")
    ours = FastCHGNet.from_reference("0.3.0").to(device).eval()
    from fastchgnet.compile.potential import CompiledPotential
    from fastchgnet.model.potential import predict_structures

    potential = ours if args.no_compile else CompiledPotential(ours)

    class Predictor:  # the one prediction path, with the potential of this run
        def predict_structure(self, structure):
            return predict_structures(potential, structure)

    predictor = Predictor()
    for name, cif in CIFS.items():
        structure = Structure.from_file(REFERENCE / cif)
        predictor.predict_structure(structure)  # compile for this shape
        with warnings.catch_warnings(), contextlib.ExitStack() as stack:
            warnings.simplefilter("ignore")
            if args.reference_flush_denormals:  # ours flushes in its own calls anyway
                stack.enter_context(flush_denormals())
            ref_t, our_t = [], []
            for _ in range(args.inference_repeats):
                ref_t.append(timed(lambda s=structure: reference.predict_structure(s)))
                our_t.append(timed(lambda s=structure: predictor.predict_structure(s)))
        r, o = statistics.median(ref_t), statistics.median(our_t)
        print(f"  {name:10s} reference {r * 1e3:7.2f}  ours {o * 1e3:7.2f}  {r / o:5.2f}x")


if __name__ == "__main__":
    main()
