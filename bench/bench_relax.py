"""Relaxation: our batched relax vs the reference chgnet StructOptimizer one by one, same run.

32 varied crystals (fastchgnet.data.random_crystals.varied_structures), FIRE with FrechetCellFilter,
the same fmax and step limit for both. Prints wall times and their ratio, our per-structure
(unbatched) time too, and how far the final energies are apart.

    python bench/bench_relax.py [--n 32] [--max-atoms 16] [--fmax 0.1] [--steps 500] [--compile]

``--compile`` adds our batched relax through a ``CompiledPotential`` (inductor, one padded
shape for the run unless a structure outgrows its headroom): its wall time with and without
the compile seconds, and the graphs it built.

OpenBLAS runs one thread (set before numpy loads) for both codes: ASE's cell filter does 3x3
linear algebra that threads only slow down. Timings come from a shared machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # after the OpenBLAS setting, which must precede numpy
import contextlib
import io
import time
import warnings

import numpy as np
import torch

from fastchgnet import FastCHGNet
from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.md import relax
from fastchgnet.md.relax import RELAX_HEADROOM

#: final energies of the two codes should agree within this, eV/atom (FIRE stops anywhere
#: with forces below fmax, and float32 noise differs between the codes)
ENERGY_TOLERANCE = 0.005


def reference_relax(structures, fmax: float, steps: int) -> tuple[float, list[float], list[int]]:
    """Wall time, final energies (eV/atom) and steps of the reference, one structure at a time."""
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import StructOptimizer

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        optimizer = StructOptimizer(model, optimizer_class="FIRE", use_device="cpu")
        start = time.perf_counter()
        outcomes = [
            optimizer.relax(s, fmax=fmax, steps=steps, relax_cell=True, verbose=False)
            for s in structures
        ]
        wall = time.perf_counter() - start
    energies = [
        o["trajectory"].energies[-1] / len(s) for o, s in zip(outcomes, structures, strict=True)
    ]
    return wall, energies, [len(o["trajectory"]) - 2 for o in outcomes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="structures")
    parser.add_argument("--max-atoms", type=int, default=16)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--fmax", type=float, default=0.1, help="eV/Å")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both codes)")
    parser.add_argument("--skip-one-by-one", action="store_true", help="skip our unbatched run")
    parser.add_argument(
        "--compile", action="store_true", help="also batched through the compiled model (inductor)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    structures = varied_structures(args.n, seed=args.seed, max_atoms=args.max_atoms)
    sizes = [len(s) for s in structures]
    print(
        f"{args.n} varied crystals ({min(sizes)}-{max(sizes)} atoms, {sum(sizes)} in all), "
        f"FIRE + FrechetCellFilter, fmax {args.fmax} eV/Å, at most {args.steps} steps; "
        f"torch {torch.__version__}, {args.threads} thread(s), shared machine"
    )
    model = FastCHGNet.from_reference("0.3.0")
    start = time.perf_counter()
    batched = relax(structures, model, fmax=args.fmax, steps=args.steps)
    t_batched = time.perf_counter() - start
    if not args.skip_one_by_one:
        start = time.perf_counter()
        relax(structures, model, fmax=args.fmax, steps=args.steps, batched=False)
        t_single = time.perf_counter() - start
    if args.compile:
        potential = CompiledPotential(model, headroom=RELAX_HEADROOM)
        start = time.perf_counter()
        compiled = relax(structures, potential, fmax=args.fmax, steps=args.steps)
        t_compiled = time.perf_counter() - start
        compiled_energies = np.array([r.energy_per_atom for r in compiled])
    t_ref, ref_energies, ref_steps = reference_relax(structures, args.fmax, args.steps)

    ours = np.array([r.energy_per_atom for r in batched])
    difference = np.abs(ours - np.array(ref_energies))
    converged = sum(r.converged for r in batched)
    print(f"reference StructOptimizer, one by one : {t_ref:8.1f} s")
    if not args.skip_one_by_one:
        print(
            f"ours, ASE per structure (unbatched)   : {t_single:8.1f} s  ({t_ref / t_single:.1f}x)"
        )
    print(f"ours, batched lockstep                : {t_batched:8.1f} s  ({t_ref / t_batched:.1f}x)")
    if args.compile:
        t_run = t_compiled - potential.compile_seconds
        apart = np.abs(compiled_energies - ours).max() * 1e3
        print(
            f"ours, batched lockstep, compiled      : {t_compiled:8.1f} s  "
            f"({t_ref / t_compiled:.1f}x); without its {potential.compile_seconds:.1f} s compile "
            f"({potential.graphs_built} graphs): {t_run:.1f} s ({t_ref / t_run:.1f}x); "
            f"|compiled - eager| final energy max {apart:.3f} meV/atom"
        )
    print(
        f"steps: ours {sum(r.steps for r in batched)}, reference {sum(ref_steps)}; "
        f"converged: ours {converged}/{args.n}"
    )
    within = int((difference < ENERGY_TOLERANCE).sum())
    print(
        f"final energy |ours - reference|: max {difference.max() * 1e3:.3f} meV/atom, "
        f"median {np.median(difference) * 1e3:.3f} meV/atom; "
        f"{within}/{args.n} within {ENERGY_TOLERANCE * 1e3:.0f} meV/atom"
    )


if __name__ == "__main__":
    main()
