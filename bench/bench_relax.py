"""Relaxation: our batched relax, eager and captured, vs the reference StructOptimizer one by one.

The same varied crystals (fastchgnet.data.random_crystals.varied_structures), FIRE with
FrechetCellFilter, the same fmax and step limit for every code (ours runs ASE's filter with its
3x3 maths reused, ``fastchgnet.md.cell_filter``: the same results; ``--reference-with-our-filter``
adds the reference over it too). Prints one row per code: wall
time, total optimizer steps, speed-up over the reference; ours eager (``compiled=False``), with
default settings (``relax`` decides whether and how to capture: its decision is printed) and
captured with ``--backend`` (inductor, or torchscript; the default-settings run uses the
compile store as a user's would); for the captured run (a
``CompiledPotential`` with ``RELAX_COMPILE``: re-sizing to tighter shapes as structures
converge) the compile seconds apart, the wall time with and without them, the capacities it
made, the graphs it compiled, its padding waste (padding entries per real atom, bond and
angle) and how many calls it ran eagerly. The captured run starts from an empty store of its
own (a cold build of our store's graphs; inductor's in-memory and FX caches and its headers
stay as the earlier runs of this process left them); a second captured run with a new
potential on that store follows (a next run, in this process: its graphs load). Last, how
far the final energies are apart.

    python bench/bench_relax.py [--n 32] [--max-atoms 16] [--fmax 0.1] [--steps 500]
        [--batch-size 64] [--no-compile] [--shrink-below 0.75] [--max-shapes 4]
        [--max-oversize 1.33] [--patience 10]

OpenBLAS runs one thread (set before numpy loads) for every code: ASE's cell filter does 3x3
linear algebra that threads only slow down. Timings come from a shared machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # after the OpenBLAS setting, which must precede numpy
import contextlib
import io
import logging
import shutil
import tempfile
import time
import warnings

import numpy as np
import torch
from help_text import first_sentence

from fastchgnet import FastCHGNet
from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.compile.store import CompiledStore
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.md import relax
from fastchgnet.md.cell_filter import CachedFrechetCellFilter
from fastchgnet.md.relax import RELAX_COMPILE

#: final energies of the two codes should agree within this, eV/atom (FIRE stops anywhere
#: with forces below fmax, and float32 noise differs between the codes)
ENERGY_TOLERANCE = 0.005


def reference_relax(
    structures, fmax: float, steps: int, ase_filter: object = "FrechetCellFilter"
) -> tuple[float, list[float], list[int]]:
    """Wall time, final energies (eV/atom) and steps of the reference, one structure at a time,
    over ``ase_filter`` (its default, ASE's FrechetCellFilter, or a filter class)."""
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import StructOptimizer

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        optimizer = StructOptimizer(model, optimizer_class="FIRE", use_device="cpu")
        start = time.perf_counter()
        outcomes = [
            optimizer.relax(
                s, fmax=fmax, steps=steps, relax_cell=True, ase_filter=ase_filter, verbose=False
            )
            for s in structures
        ]
        wall = time.perf_counter() - start
    energies = [
        o["trajectory"].energies[-1] / len(s) for o, s in zip(outcomes, structures, strict=True)
    ]
    return wall, energies, [len(o["trajectory"]) - 2 for o in outcomes]


class Decisions(logging.Handler):
    """The compile decisions relax logs (logger ``fastchgnet.md``), as lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def timed_relax(structures, model, **options) -> tuple[float, np.ndarray, int, int]:
    """Wall time, final energies (eV/atom), total steps and converged count of our relax."""
    start = time.perf_counter()
    results = relax(structures, model, **options)
    wall = time.perf_counter() - start
    energies = np.array([r.energy_per_atom for r in results])
    return wall, energies, sum(r.steps for r in results), sum(r.converged for r in results)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--n", type=int, default=32, help="structures")
    parser.add_argument("--max-atoms", type=int, default=16)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--fmax", type=float, default=0.1, help="eV/Å")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64, help="structures relaxing at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (every code)")
    parser.add_argument(
        "--reference-with-our-filter",
        action="store_true",
        help="also run the reference over our cell filter (fastchgnet.md.cell_filter), to "
        "show how much of our lead it makes",
    )
    parser.add_argument("--skip-one-by-one", action="store_true", help="skip our unbatched run")
    parser.add_argument("--no-compile", action="store_true", help="skip the captured run")
    parser.add_argument(
        "--backend", default="inductor", help="capture: a torch.compile backend or torchscript"
    )
    parser.add_argument(
        "--shrink-below",
        type=float,
        default=RELAX_COMPILE["shrink_below"],
        help="re-size when a tighter capacity needs at most this fraction (0: never)",
    )
    parser.add_argument("--max-shapes", type=int, default=RELAX_COMPILE["max_shapes"])
    parser.add_argument(
        "--patience",
        type=int,
        default=RELAX_COMPILE["patience"],
        help="eager calls before a new capacity is made for graphs that fit none",
    )
    parser.add_argument(
        "--max-oversize",
        type=float,
        default=RELAX_COMPILE["max_oversize"],
        help="run a call eagerly in a capacity this many times a fresh one for it (0: never)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    structures = varied_structures(args.n, seed=args.seed, max_atoms=args.max_atoms)
    sizes = [len(s) for s in structures]
    print(
        f"{args.n} varied crystals ({min(sizes)}-{max(sizes)} atoms, {sum(sizes)} in all), "
        f"FIRE + FrechetCellFilter, fmax {args.fmax} eV/Å, at most {args.steps} steps, "
        f"batch size {args.batch_size}; torch {torch.__version__}, {args.threads} thread(s), "
        "shared machine"
    )
    model = FastCHGNet.from_reference("0.3.0")
    options = dict(fmax=args.fmax, steps=args.steps, batch_size=args.batch_size)
    rows: list[tuple[str, float, int, str]] = []
    eager = options | {"compiled": False}
    t_eager, ours, steps_eager, converged = timed_relax(structures, model, **eager)
    rows.append(("ours, batched, eager", t_eager, steps_eager, f"converged {converged}/{args.n}"))
    decisions, logger = Decisions(), logging.getLogger("fastchgnet.md")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(decisions)
    t_auto, auto, steps_auto, _ = timed_relax(structures, model, **options)
    logger.removeHandler(decisions)
    logger.setLevel(level)
    difference = np.abs(auto - ours).max() * 1e3
    note = f"{'; '.join(decisions.lines)}; |default - eager| max {difference:.3f} meV/atom"
    rows.append(("ours, batched, default settings", t_auto, steps_auto, note))
    if not args.skip_one_by_one:
        t_single, _, steps_single, _ = timed_relax(structures, model, batched=False, **options)
        rows.append(("ours, ASE per structure (unbatched)", t_single, steps_single, ""))
    if not args.no_compile:
        store = CompiledStore(tempfile.mkdtemp(prefix="bench-relax-"))  # empty: a cold build

        def captured_potential() -> CompiledPotential:
            return CompiledPotential(
                model,
                backend=args.backend,
                headroom=RELAX_COMPILE["headroom"],
                shrink_below=args.shrink_below or None,
                max_shapes=args.max_shapes,
                max_oversize=args.max_oversize or None,
                patience=args.patience,
                background=RELAX_COMPILE["background"],
                store=store,
            )

        try:
            potential = captured_potential()
            t_captured, captured, steps_captured, _ = timed_relax(structures, potential, **options)
            # a next run: a new potential finds what the first kept in the store
            warm = captured_potential()
            t_warm, warm_energies, steps_warm, _ = timed_relax(structures, warm, **options)
        finally:
            shutil.rmtree(store.root, ignore_errors=True)
        compile_s = potential.compile_seconds
        waste = potential.padding.report()
        note = (
            f"{len(potential.capacities)} capacities, {potential.graphs_built} graphs"
            + (  # TorchScript: in a child process on a core of its own, calls eager meanwhile
                f" ({potential.background_seconds:.1f} s of builds in the background)"
                if potential.background_seconds
                else ""
            )
            + "; padding "
            f"waste {100 * waste['waste']:.0f} % over {waste['batches']} calls, "
            f"{potential.eager_calls} of them eager; "
            f"|captured - eager| final energy max {np.abs(captured - ours).max() * 1e3:.3f} "
            "meV/atom"
        )
        rows.append(
            (f"ours, batched, {args.backend}, with compile", t_captured, steps_captured, "")
        )
        rows.append(
            (
                f"  the same without its {compile_s:.1f} s compile",
                t_captured - compile_s,
                steps_captured,
                note,
            )
        )
        loading = sum(captured.stats.load_seconds for captured in warm.captured.values())
        warm_note = (
            f"{warm.graphs_loaded} graphs loaded in {loading:.2f} s, "
            f"{warm.graphs_built} built; |next - eager| final energy max "
            f"{np.abs(warm_energies - ours).max() * 1e3:.3f} meV/atom"
        )
        rows.append((f"ours, batched, {args.backend}, next run", t_warm, steps_warm, warm_note))
        # the machine is shared: time eager again after the captured run, compare with the mean
        t_again, _, _, _ = timed_relax(structures, model, **eager)
        rows.append(("ours, batched, eager, again after captured", t_again, steps_eager, ""))
        t_eager = (t_eager + t_again) / 2
    t_ref, ref_energies, ref_steps = reference_relax(structures, args.fmax, args.steps)
    rows.insert(0, ("reference StructOptimizer, one by one", t_ref, sum(ref_steps), ""))
    if args.reference_with_our_filter:  # how much of the lead is the cell filter's
        t_filter, _, filter_steps = reference_relax(
            structures, args.fmax, args.steps, CachedFrechetCellFilter
        )
        note = f"our CachedFrechetCellFilter: {t_ref / t_filter:.2f}x the reference as shipped"
        rows.insert(1, ("reference, with our cell filter", t_filter, sum(filter_steps), note))

    print(f"{'run':<46} {'wall s':>8} {'steps':>6} {'vs ref':>7}")
    for name, wall, steps, note in rows:
        print(f"{name:<46} {wall:8.1f} {steps:6d} {t_ref / wall:6.1f}x  {note}")
    if not args.no_compile:
        run_s = t_captured - compile_s
        print(
            f"captured / eager wall (eager: mean of its two runs), without compile: "
            f"{run_s / t_eager:.2f} "
            f"({run_s:.1f} s vs {t_eager:.1f} s); with compile: {t_captured / t_eager:.2f}; "
            f"the next run, its graphs from the store: {t_warm / t_eager:.2f}"
        )
    difference = np.abs(ours - np.array(ref_energies))
    within = int((difference < ENERGY_TOLERANCE).sum())
    print(
        f"final energy |ours - reference|: max {difference.max() * 1e3:.3f} meV/atom, "
        f"median {np.median(difference) * 1e3:.3f} meV/atom; "
        f"{within}/{args.n} within {ENERGY_TOLERANCE * 1e3:.0f} meV/atom"
    )


if __name__ == "__main__":
    main()
