"""MD step time: our Calculator + ASE integrator vs the reference chgnet MolecularDynamics, same
run, same CPU; and NVE energy drift of both on the same starting state.

Cases: LiMnO2 (8 atoms) and Li9Co7O16 (32 atoms) from ../shared/data/reference (skipped when
absent) and a 64-atom supercell. NVT Berendsen at 300 K, 2 fs (the reference's default
thermostat for NVT). Every side of a case is timed in ``--chunks`` rounds, taking turns, and
keeps its median round: load bursts on a shared machine hit all sides alike. Before each turn,
torch's OpenMP team is restarted as that side's user would have it (``thread_team``): the
reference as shipped with worker threads that do not flush denormals, every other side with
workers that do. Ours is timed eager as run (stress only when asked: never in NVT), eager with
stress on every step (the reference's work), and captured (``CompiledPotential`` with the
backend run_md's decision prices best, inductor or TorchScript; one padded shape with headroom,
as run: no stress). The compile happens before the timing (its seconds are printed apart). By
default every case compiles with empty caches of its own (a new folder per case for our store
and inductor's cache: no case loads a graph an earlier case built, such as the one TorchScript
graph of any sizes), so each is a cold compile, as a user's first run on a new machine; only
inductor's precompiled C++ headers, whose folder inductor fixes at import (a temporary folder,
empty at the start), are built once, by the first case that builds with inductor, and shared
by later ones. ``--warm`` keeps the user's caches for every case. Then
the default-settings table: what ``run_md`` with no options does over ``--md-steps`` (2000)
steps (compile only where it pays, decided as ``run_md`` decides it), its total time with the
compile, against the reference as shipped and with denormals flushed (``flush_denormals``, one
line a chgnet user can add). Totals are the per-step times times the steps, plus the measured
compile. The graph/model split of our step is printed. With ``--full-runs`` each case's
default-settings ``run_md`` is also timed whole, in a new process with empty caches of its
own: that counts what the totals leave out (the decision's timing calls, calls that outgrow
the shape and run eagerly, a second build); then once more in a new process that finds the
caches the first left (a user's next run: the stored graph loads at the first call).

    python bench/bench_md.py [--steps 40] [--threads 1] [--nve-steps 200] [--md-steps 2000]
        [--full-runs]

OpenBLAS runs one thread (set before numpy loads): ASE's small linear algebra gains nothing
from more and loses much on a shared machine. Both codes run under the same settings.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
if "--warm" not in sys.argv:  # before torch loads: inductor fixes its header folder at import
    _COLD = tempfile.mkdtemp(prefix="bench-md-")
    atexit.register(shutil.rmtree, _COLD, ignore_errors=True)
    os.makedirs(os.path.join(_COLD, "tmp"))
    os.environ["FASTCHGNET_CACHE_DIR"] = _COLD
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(_COLD, "inductor")
    os.environ["TMPDIR"] = os.path.join(_COLD, "tmp")  # the header warm-up child's too
    tempfile.tempdir = None  # re-read TMPDIR

import argparse  # after the OpenBLAS setting, which must precede numpy
import contextlib
import io
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from help_text import first_sentence
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from fastchgnet import FastCHGNet
from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.data.batch import collate
from fastchgnet.data.capacity import Counts, entries
from fastchgnet.md import Calculator, make_integrator
from fastchgnet.md.dynamics import md_compile_decision
from fastchgnet.numerics import flush_denormals, restart_thread_team

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference"


def cases() -> dict[str, Atoms]:
    """The paper's two structures (when present) and a 64-atom supercell, as ASE Atoms."""
    found = {}
    limno2 = REFERENCE / "mp-18767-LiMnO2.cif"
    licoo = REFERENCE / "mp-1175469-Li9Co7O16.cif"
    if limno2.is_file() and licoo.is_file():
        found["LiMnO2 (8 atoms)"] = Structure.from_file(limno2)
        found["Li9Co7O16 (32 atoms)"] = Structure.from_file(licoo)
        found["LiMnO2 2x2x2 (64 atoms)"] = found["LiMnO2 (8 atoms)"] * (2, 2, 2)
    else:
        print(f"reference structures not found in {REFERENCE}: LiMnO2, Li9Co7O16 skipped")
        from fastchgnet.data.random_crystals import varied_structures

        rocksalt = next(s for s in varied_structures(50, seed=0) if len(s) == 8)
        found["rocksalt 2x2x2 (64 atoms)"] = rocksalt * (2, 2, 2)
    return {name: AseAtomsAdaptor.get_atoms(s) for name, s in found.items()}


def thermalised(atoms: Atoms, seed: int = 0) -> Atoms:
    atoms = atoms.copy()
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    Stationary(atoms)
    return atoms


def thread_team(flushing: bool) -> None:
    """Restart torch's OpenMP team with its worker threads flushing denormals or not, as the
    process of a user of that side would have them: the reference as shipped never flushes,
    so its workers do not; a user who adds the one line at the top of a script starts the
    team flushing, and ours flush on every thread (``numerics.team_flushing``). In one
    process the team keeps whatever the last side left, so each side sets its own before it
    runs (outside the timing)."""
    with flush_denormals() if flushing else contextlib.nullcontext():
        restart_thread_team()
        torch.ones(torch.get_num_threads() * (1 << 16)).sum()  # the new team starts here


#: the side that runs as shipped: no denormal is flushed on any of its threads
AS_SHIPPED = "reference"


#: untimed steps at the start of every turn of ``interleaved`` (every side alike)
TURN_WARMUP = 1


def interleaved(dyns: dict, steps: int, warmup: int, chunks: int = 5) -> dict[str, float]:
    """Seconds per MD step of each dynamics object: after ``warmup`` steps each, ``steps``
    steps each in ``chunks`` rounds, the objects taking turns within a round; per object the
    median over rounds. A burst of load on a shared machine then hits every side alike. Each
    side runs with the thread team its user would have (``thread_team``), and each turn starts
    with one untimed step (``TURN_WARMUP``): the other sides' turns have evicted its data from
    the caches, which a user's run of thousands of steps in a row pays once, not every few
    steps (the 8-atom step measured 15.3-16.7 ms first in a turn, 13.3-14.5 ms after)."""
    for name, dyn in dyns.items():
        thread_team(flushing=name != AS_SHIPPED)
        dyn.run(warmup)
    per_chunk = max(1, steps // chunks)
    seen: dict[str, list[float]] = {name: [] for name in dyns}
    for _ in range(chunks):
        for name, dyn in dyns.items():
            thread_team(flushing=name != AS_SHIPPED)
            dyn.run(TURN_WARMUP)
            start = time.perf_counter()
            dyn.run(per_chunk)
            seen[name].append((time.perf_counter() - start) / per_chunk)
    return {name: float(np.median(times)) for name, times in seen.items()}


def own_cold_caches(case: int) -> None:
    """Point our compiled store and inductor's cache at a new, empty folder for case number
    ``case`` (the process's cold cache root ``_COLD``, not with ``--warm``): its compile finds
    nothing an earlier case built. Both folders are read when a potential is made and at a
    build; inductor's in-memory caches are cleared too (its header folder stays: module
    docstring)."""
    folder = os.path.join(_COLD, f"case-{case}")
    os.makedirs(folder)
    os.environ["FASTCHGNET_CACHE_DIR"] = folder
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(folder, "inductor")
    if "torch._inductor.utils" in sys.modules:
        sys.modules["torch._inductor.utils"].clear_caches()


def reference_md(atoms: Atoms, reference, ensemble: str = "nvt", timestep: float = 2.0):
    from chgnet.model.dynamics import MolecularDynamics

    with contextlib.redirect_stdout(io.StringIO()):
        md = MolecularDynamics(
            atoms, model=reference, ensemble=ensemble, thermostat="Berendsen",
            temperature=300, timestep=timestep, use_device="cpu",
        )  # fmt: skip
    return md.dyn


def step_split(
    atoms: Atoms, model: FastCHGNet, compiled: CompiledPotential, repeats: int = 10
) -> tuple[float, float, float]:
    """(graph, eager, compiled) seconds of one of our force calls: skin graph update, then
    collate + eager model, or pad + compiled model (already compiled for this shape)."""
    calc = Calculator(model)
    calc.graph(atoms)
    start = time.perf_counter()
    for _ in range(repeats):
        graph = calc.graph(atoms)
    graph_time = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        with flush_denormals():
            model(collate([graph]), compute_forces=True, compute_stress=False)
    eager_time = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        compiled.predict_graphs([graph], stress=False)
    return graph_time, eager_time, (time.perf_counter() - start) / repeats


def compiled_md(atoms: Atoms, potential: CompiledPotential) -> tuple[object, float, int]:
    """(dynamics, seconds, eager steps) of our compiled calculator on ``atoms`` until its first
    graph runs, as ``run_md`` runs it: MD steps run eagerly while the potential's patience
    lasts (they size its one shape), then the step that makes the shape traces and compiles it
    (or loads it from the store). A potential that does not pad (TorchScript) starts its build
    at its first step, in a child process while the steps go on eagerly (``run_md``'s
    default). The seconds are that whole phase's wall time, before any timing."""
    atoms.calc = Calculator(potential)
    dyn = make_integrator(atoms, "nvt", "berendsen", temperature=300, timestep=2.0)
    eager_steps, start = 0, time.perf_counter()
    while not potential.has_graphs:
        dyn.run(1)
        eager_steps += not potential.has_graphs
    return dyn, time.perf_counter() - start, eager_steps


def flushed(dyn):
    """``dyn`` whose ``run`` flushes denormals (the one line a chgnet user can add)."""
    run = dyn.run

    def run_flushed(steps: int):
        with flush_denormals():
            return run(steps)

    dyn.run = run_flushed
    return dyn


def nve_drift(atoms: Atoms, calc, steps: int, timestep: float) -> tuple[float, float]:
    """(drift, fluctuation) of the total energy in NVE: slope of a linear fit, meV/atom/ps,
    and the largest deviation from the start, meV/atom."""
    atoms = atoms.copy()
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep=timestep * units.fs)
    energies: list[float] = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy() / len(atoms)), interval=1)
    with contextlib.redirect_stdout(io.StringIO()):
        dyn.run(steps)
    times_ps = np.arange(len(energies)) * timestep / 1000
    slope = np.polyfit(times_ps, energies, 1)[0]
    return slope * 1e3, float(np.abs(np.array(energies) - energies[0]).max()) * 1e3


def full_runs(name: str, steps: int, threads: int, warm: bool) -> tuple[float, float]:
    """Seconds of two ``run_md`` with default settings (NVT Berendsen, 300 K, 2 fs, ``steps``
    steps) on case ``name`` from its thermalised start, each in a new process: the first with
    caches of its own that start empty (a user's first run on a new machine; with ``warm``,
    the user's caches), the second with the caches the first left (the user's next run). The
    process start, imports and the model load are off the clock, the first call, the compile
    decision and any build or load on it."""
    command = [sys.executable, __file__, "--child-run", name, "--md-steps", str(steps)]
    command += ["--threads", str(threads), "--warm"]  # the caches ``environment`` names
    environment = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="bench-md-run-") as caches:
        if not warm:  # the same variables as this process's cold caches, in a folder of its own
            os.makedirs(os.path.join(caches, "tmp"))
            environment["FASTCHGNET_CACHE_DIR"] = caches
            environment["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(caches, "inductor")
            environment["TMPDIR"] = os.path.join(caches, "tmp")
        seconds = []
        for _ in range(2):
            done = subprocess.run(
                command, capture_output=True, text=True, check=True, env=environment
            )
            seconds.append(float(done.stdout.strip().splitlines()[-1]))
    return seconds[0], seconds[1]


def child_run(name: str, steps: int) -> None:
    """``full_run``'s child: prints the seconds of the run."""
    from fastchgnet.md.dynamics import run_md

    model = FastCHGNet.from_reference("0.3.0")
    start = thermalised(cases()[name])
    begin = time.perf_counter()
    run_md(start, model, thermostat="berendsen", timestep=2.0, steps=steps, progress=False)
    print(time.perf_counter() - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--steps", type=int, default=40, help="timed MD steps per case")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--chunks", type=int, default=5, help="rounds the sides take turns in (median kept)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both codes)")
    parser.add_argument("--nve-steps", type=int, default=200, help="0 skips the NVE drift")
    parser.add_argument("--nve-timestep", type=float, default=1.0, help="fs")
    parser.add_argument(
        "--md-steps", type=int, default=2000, help="run length of the default-settings table"
    )
    parser.add_argument(
        "--warm", action="store_true", help="keep the compile caches (default: empty ones)"
    )
    parser.add_argument(
        "--full-runs",
        action="store_true",
        help="also time whole default-settings run_md of --md-steps per case, each in a new "
        "process: one with empty caches, then one with the caches it left",
    )
    parser.add_argument("--child-run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_run:
        child_run(args.child_run, args.md_steps)
        return

    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    ours = FastCHGNet.from_reference("0.3.0")
    structures = cases()
    print(
        f"torch {torch.__version__}, {args.threads} torch thread(s), NVT Berendsen 300 K 2 fs, "
        f"{args.steps} timed steps after {args.warmup}; shared machine, timings are noisy"
    )
    header = (
        "structure", "reference ms", "ours ms", "ratio", "ours+stress ms", "ratio",
        "captured ms", "ratio", "compile s", "built/loaded", "capture",
    )  # fmt: skip
    columns = "{:26s} {:>13s} {:>9s} {:>7s} {:>15s} {:>7s} {:>12s} {:>7s} {:>10s} {:>12s} {}"
    print(columns.format(*header))
    potentials, defaults, pads = {}, {}, {}
    for case, (name, atoms) in enumerate(structures.items()):
        if not args.warm:
            own_cold_caches(case)
        start = thermalised(atoms)
        dyns = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dyns[AS_SHIPPED] = reference_md(start.copy(), reference)
            dyns["reference flushed"] = flushed(reference_md(start.copy(), reference))
        for always_stress in (False, True):
            mine = start.copy()
            mine.calc = Calculator(ours, always_stress=always_stress)
            dyns[f"ours {always_stress}"] = make_integrator(
                mine, "nvt", "berendsen", temperature=300, timestep=2.0
            )
        # run_md's default: compile only where it pays over --md-steps (decided as run_md does:
        # on a calculator without stress, as NVT runs)
        deciding = start.copy()
        deciding.calc = Calculator(ours)
        decision, potential = md_compile_decision(deciding, ours, args.md_steps, stress=False)
        dyns["compiled"], first_seconds, patience = compiled_md(start.copy(), potential)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            times = interleaved(dyns, args.steps, args.warmup, args.chunks)
        t_ref, t_ref_flushed = times["reference"], times["reference flushed"]
        timings = [times["ours False"], times["ours True"]]
        t_compiled = times["compiled"]
        potentials[name] = potential
        ours_total = (  # eager until the graph runs (measured), then compiled where faster
            first_seconds + (args.md_steps - patience - 1) * min(t_compiled, timings[0])
            if decision.compile
            else args.md_steps * timings[0]
        )
        build = potential.compile_seconds + potential.background_seconds
        moved = dyns["compiled"].atoms  # the compiled run's atoms after its timed steps
        real = Counts.of([moved.calc.graph(moved)]).entries
        pads[name] = entries(potential.capacities[0]) / real if potential.pads else 1.0
        defaults[name] = (
            decision,
            ours_total,
            args.md_steps * t_ref,
            args.md_steps * t_ref_flushed,
        )
        print(
            f"{name:26s} {t_ref * 1e3:13.2f} {timings[0] * 1e3:9.2f} {t_ref / timings[0]:6.2f}x"
            f" {timings[1] * 1e3:15.2f} {t_ref / timings[1]:6.2f}x"
            f" {t_compiled * 1e3:12.2f} {t_ref / t_compiled:6.2f}x {build:10.1f}"
            f" {f'{potential.graphs_built}/{potential.graphs_loaded}':>12s} {potential.backend}"
            f"{' (built in the background)' if potential.background_seconds else ''}"
        )
    build = "with the user's caches (--warm)" if args.warm else "cold, with the case's own caches"
    print(
        f"\nrun_md's default settings over {args.md_steps} steps, compile included (totals from "
        "the per-step times above and the measured steps until the first graph ran, its build "
        f"{build}, included; reference as shipped and with denormals flushed)"
    )
    print(
        f"{'structure':26s} {'decision':11s} {'ours s':>8s} {'reference s':>12s} {'ratio':>7s} "
        f"{'flushed s':>10s} {'ratio':>7s}"
    )
    for name, (decision, ours_total, ref_total, ref_flushed_total) in defaults.items():
        print(
            f"{name:26s} {decision.backend if decision.compile else 'eager':11s} {ours_total:8.1f} "
            f"{ref_total:12.1f} {ref_total / ours_total:6.2f}x {ref_flushed_total:10.1f} "
            f"{ref_flushed_total / ours_total:6.2f}x"
        )
        print(f"{'':26s} {decision.reason}")
        if not potentials[name].pads:
            print(f"{'':26s} {potentials[name].backend}: unpadded calls, any sizes")
            continue
        capacity = potentials[name].capacities[0]
        print(
            f"{'':26s} compiled shape {capacity}: {pads[name]:.2f} padded entries per real one "
            "at the end of the timed steps"
        )
    if args.full_runs:
        first = "the user's caches (--warm)" if args.warm else "empty caches of its own"
        print(
            f"\nwhole default-settings run_md of {args.md_steps} steps, measured in new processes "
            f"against the reference's totals above: the first run with {first}, then the next "
            "run, which finds what the first left in them"
        )
        print(
            f"{'structure':26s} {'first s':>8s} {'ratio':>7s} {'flushed ratio':>14s} "
            f"{'next s':>8s} {'ratio':>7s} {'flushed ratio':>14s}"
        )
        for name, (_, _, ref_total, ref_flushed_total) in defaults.items():
            runs = full_runs(name, args.md_steps, args.threads, args.warm)
            print(
                f"{name:26s}"
                + "".join(
                    f" {run:8.1f} {ref_total / run:6.2f}x {ref_flushed_total / run:13.2f}x"
                    for run in runs
                )
            )
    print(
        "\nwhere our step goes (ms): skin graph update | collate + eager model | "
        "pad + compiled model (energy, forces)"
    )
    for name, atoms in structures.items():
        graph_time, eager_time, compiled_time = step_split(atoms, ours, potentials[name])
        print(
            f"{name:26s} {graph_time * 1e3:8.2f} | {eager_time * 1e3:8.2f} | "
            f"{compiled_time * 1e3:8.2f}"
        )

    if args.nve_steps:
        name, atoms = next(iter(structures.items()))  # the smallest: NVE runs long
        start = thermalised(atoms, seed=1)
        print(
            f"\nNVE {name}, 300 K start, {args.nve_timestep} fs, {args.nve_steps} steps (float32)"
        )
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            reference_calc = CHGNetCalculator(reference, use_device="cpu")
        compiled_calc = Calculator(potentials[name])  # the shape compiled above
        calcs = (("reference", reference_calc), ("ours", Calculator(ours)))
        for label, calc in (*calcs, ("compiled", compiled_calc)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                drift, swing = nve_drift(start, calc, args.nve_steps, args.nve_timestep)
            print(
                f"{label:10s} drift {drift:+8.3f} meV/atom/ps, "
                f"largest deviation {swing:6.3f} meV/atom"
            )


if __name__ == "__main__":
    main()
