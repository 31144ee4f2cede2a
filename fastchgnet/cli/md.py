"""The ``fastchgnet relax`` and ``fastchgnet md`` subcommands (registered by cli.commands).

    fastchgnet relax STRUCTURE... [-o relaxed.extxyz] [--fmax 0.1] [--steps 500] [--fixed-cell]
    fastchgnet md STRUCTURE [-o md.extxyz] [--ensemble nvt] [--thermostat nose-hoover] ...

Structures come from CIF, POSCAR or extxyz (anything ASE or pymatgen reads); results go to
extxyz (or any format ASE writes, picked from the suffix), with energy, forces, stress and
magnetic moments of every frame. An output file that exists already (-o, --trajectory, --log)
is refused before anything runs, unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastchgnet.cli.inputs import (
    STRUCTURES_HELP,
    DefaultsFormatter,
    add_model_arguments,
    structure_label,
)
from fastchgnet.cli.output_files import check_frames_file, check_output_file, refuse_existing
from fastchgnet.md.settings import THERMOSTATS

RELAX_EPILOG = "example: fastchgnet relax a.cif b.vasp -o relaxed.extxyz --fmax 0.05"
MD_EPILOG = (
    "example: fastchgnet md LiMnO2.cif --ensemble nvt --thermostat langevin "
    "--temperature 600 --steps 2000 -o md.extxyz --log md.log"
)

RELAX_COMPILE_HELP = (
    "compile the model for a few padded shapes that shrink as structures converge: 'on' "
    "(inductor), 'torchscript' (builds in seconds for any sizes, unpadded, gains less), 'off', "
    "or 'auto' (default): "
    "the capture that saves the most over the expected steps net of its build, judged from "
    "the first (eager) step, or none; the decision is printed"
)
MD_COMPILE_HELP = (
    "compile the model for the run's padded shape: 'on' (inductor), 'torchscript' (builds in "
    "seconds for any sizes, unpadded, gains less), 'off', or 'auto' (default): the capture "
    "that saves the most over "
    "--steps net of its build (a cold CPU inductor build takes about half a minute, a shape "
    "already in the on-disk store about a second), or none; the decision is printed"
)
FMAX_HELP = (
    "force threshold, eV/Å, for every atom's force and (unless --fixed-cell) the cell force "
    "of ASE's FrechetCellFilter: the virial per atom, stress x volume / N atoms, in eV/Å; "
    "so the cell relaxes until its stress is below about fmax x N / V (eV/Å³; x 160.2 for "
    "GPa: 0.1 eV/Å on 8 atoms in 160 Å³ is ~0.8 GPa)"
)
COMPILE_CHOICES = {"auto": None, "on": True, "off": False, "torchscript": "torchscript"}


def add_commands(sub: Any) -> None:
    """Add ``relax`` and ``md`` to the ``fastchgnet`` subparsers."""
    relax = sub.add_parser(
        "relax",
        help="relax structures (atoms and cell) with FIRE or BFGS, batched",
        description="Relax structures until every force (and the cell force, see --fmax) is "
        "below --fmax. "
        "Exit code 1 (after the outputs are written) when a structure was skipped or did "
        "not converge within --steps; 130 / 143 when stopped by SIGINT / SIGTERM (the "
        "structures done are written).",
        epilog=RELAX_EPILOG,
        formatter_class=DefaultsFormatter,
    )
    relax.add_argument("structures", nargs="+", help=STRUCTURES_HELP)
    relax.add_argument("-o", "--output", default="relaxed.extxyz", help="relaxed structures")
    add_model_arguments(relax)
    relax.add_argument("--fmax", type=float, default=0.1, help=FMAX_HELP)
    relax.add_argument("--steps", type=int, default=500, help="most steps per structure")
    relax.add_argument("--optimizer", choices=("FIRE", "BFGS"), default="FIRE")
    relax.add_argument("--fixed-cell", action="store_true", help="relax positions only")
    relax.add_argument("--trajectory", help="write every step of every structure here")
    relax.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an -o or --trajectory file that exists (without it, one is refused)",
    )
    relax.add_argument(
        "--one-by-one", action="store_true", help="ASE's optimizer.run per structure, unbatched"
    )
    relax.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="structures relaxing at once, one model call a step; the next fills a freed slot",
    )
    relax.add_argument(
        "--compile", choices=list(COMPILE_CHOICES), default="auto", help=RELAX_COMPILE_HELP
    )
    relax.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    relax.set_defaults(func=cmd_relax)

    md = sub.add_parser(
        "md",
        help="molecular dynamics (NVE, NVT, NPT) of one structure",
        description="Molecular dynamics with ASE's integrators. Thermostats: "
        + "; ".join(f"{e}: {', '.join(t)}" for e, t in THERMOSTATS.items())
        + ". A setting the chosen ensemble and thermostat do not use is refused.",
        epilog=MD_EPILOG,
        formatter_class=DefaultsFormatter,
    )
    md.add_argument("structure", help="one structure: " + STRUCTURES_HELP)
    md.add_argument("-o", "--output", default="md.extxyz", help="trajectory (extxyz, traj, ...)")
    add_model_arguments(md)
    md.add_argument("--ensemble", choices=tuple(THERMOSTATS), default="nvt", help="ensemble")
    thermostats = sorted({t for names in THERMOSTATS.values() for t in names})
    md.add_argument(
        "--thermostat",
        choices=thermostats,
        help="default: nose-hoover for nvt and npt; nve takes none",
    )
    md.add_argument(
        "--temperature",
        type=float,
        default=300.0,
        help="K: the thermostat's target and the start's, exactly (Maxwell-Boltzmann velocities "
        "drawn with --seed, less the centre-of-mass drift, scaled to this temperature); a "
        "structure with momenta (a frame of an earlier run, FILE@-1) starts from them",
    )
    md.add_argument("--timestep", type=float, default=2.0, help="fs")
    md.add_argument("--steps", type=int, default=1000, help="MD steps")
    md.add_argument("--loginterval", type=int, default=10, help="frames and log lines every N")
    md.add_argument(
        "--log",
        help="ASE MD log file (time ps, energies eV/atom, temperature K; npt: the stress in GPa, "
        "ASE sign, pressure = -mean of the first three)",
    )
    md.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an -o or --log file that exists (without it, one is refused)",
    )
    md.add_argument("--pressure", type=float, help="NPT pressure, GPa (default 1 atm)")
    md.add_argument(
        "--taut",
        type=float,
        help="thermostat time, fs (default 100 timesteps); for langevin it sets the friction "
        "to 1/taut",
    )
    md.add_argument(
        "--friction", type=float, help="langevin friction, 1/fs (default 0.01; not with --taut)"
    )
    md.add_argument("--taup", type=float, help="NPT barostat time, fs (default 1000 timesteps)")
    md.add_argument(
        "--bulk-modulus", type=float, help="Berendsen NPT barostat's estimate, GPa (default 100)"
    )
    md.add_argument("--seed", type=int, help="random seed (velocities, Langevin, Bussi)")
    md.add_argument(
        "--max-temperature",
        type=float,
        help="K: stop as diverged above it (default 10x the target, at least 1e5; inf: never)",
    )
    md.add_argument(
        "--compile", choices=list(COMPILE_CHOICES), default="auto", help=MD_COMPILE_HELP
    )
    md.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar; the one-line notices (the compile decision, a start from stored "
        "momenta) still go to stderr",
    )
    md.set_defaults(func=cmd_md)


def cmd_relax(args: argparse.Namespace) -> int:
    from fastchgnet.cli.inputs import load_model, read_structures_skipping, screen_structures
    from fastchgnet.data.graph import structure_name
    from fastchgnet.files import write_frames_atomic
    from fastchgnet.md.calculator import first_neighbours
    from fastchgnet.md.relax import RELAX_PATIENCE, relax

    for option, value, fine, need in (
        ("--fmax", args.fmax, args.fmax > 0 and math.isfinite(args.fmax), "> 0 eV/Å"),  # NaN
        ("--steps", args.steps, args.steps >= 0, ">= 0"),
        ("--batch-size", args.batch_size, args.batch_size >= 1, ">= 1"),
    ):
        if not fine:
            raise ValueError(f"{option} must be {need}, got {value}")
    refuse_existing(args.output, "-o", args.overwrite)
    refuse_existing(args.trajectory, "--trajectory", args.overwrite)
    structures, unread = read_structures_skipping(args.structures, "relax")
    several = len(structures) > 1  # one may go to a CIF or POSCAR; several need their names
    check_frames_file(args.output, "-o", several=several, labelled=several)
    if args.trajectory is not None:
        check_frames_file(args.trajectory, "--trajectory", several=True, labelled=True)
        if Path(args.trajectory).resolve() == Path(args.output).resolve():
            raise ValueError(f"--trajectory {args.trajectory}: is the -o file too; name another")
    model = load_model(args.model, args.precision, args.device)

    def neighbours(structure: Any, index: int) -> Any:  # what the relaxation starts from
        return first_neighbours(model.config, structure, structure_name(structure, index))

    screened = screen_structures(model.config, structures, "relax", "relaxed", neighbours)
    kept = [k for k, found in enumerate(screened) if found is not None]
    good = [structures[k] for k in kept]
    from fastchgnet.md.outputs import RelaxInterrupted
    from fastchgnet.signals import stop_signals

    compiling = args.compile != "off"
    if COMPILE_CHOICES[args.compile] in (True, "inductor"):
        print(
            f"relax: compiling ({args.compile}) once {RELAX_PATIENCE} eager steps have sized "
            "the first shape: a minute or two on a CPU unless the compiled store holds it",
            file=sys.stderr,
        )
    try:
        notices = notices_on_stderr(args.quiet)  # the compile decision, --quiet too
        with stop_signals(), notices, notices_on_stderr(compiling, "fastchgnet.compile"):
            results = relax(
                good,
                model,
                fmax=args.fmax,
                steps=args.steps,
                relax_cell=not args.fixed_cell,
                optimizer=args.optimizer,
                trajectory=args.trajectory,
                batched=not args.one_by_one,
                batch_size=args.batch_size,
                progress=not args.quiet,
                compiled=COMPILE_CHOICES[args.compile],
                neighbours=[screened[k] for k in kept],
            )
    except RelaxInterrupted as stop:
        done = dict(stop.results)
        write_frames_atomic(
            args.output, relaxed_frames(good, done, quiet=True), new=not args.overwrite
        )
        converged = sum(result.converged for result in done.values())
        print(
            f"relax interrupted: {converged} of {len(structures)} structures converged, "
            f"written to {args.output}",
            file=sys.stderr,
        )
        return stop.exit_code
    frames = relaxed_frames(good, dict(enumerate(results)), args.quiet)
    write_frames_atomic(args.output, frames, new=not args.overwrite)
    unconverged = sum(not result.converged for result in results)
    if unconverged:
        print(
            f"{unconverged} of {len(results)} structures did not converge within --steps "
            f"{args.steps}",
            file=sys.stderr,
        )
    return 1 if unconverged or len(good) < len(structures) or unread else 0


def relaxed_frames(structures: list[Any], results: dict[int, Any], quiet: bool) -> list[Any]:
    """The -o frames of ``relax``'s results (input index -> ``RelaxResult``): each one's
    atoms, named as read, with ``converged`` and ``steps`` (and ``interrupted`` for a structure
    stopped by a signal) in its info; unless ``quiet``, one line per structure on stdout."""
    frames = []
    for index, result in results.items():
        frame = result.atoms
        name = structure_label(structures[index])
        frame.info.update(name=name, converged=result.converged, steps=result.steps)
        if result.interrupted:
            frame.info["interrupted"] = True
        frames.append(frame)
        if not quiet:
            state = "converged" if result.converged else "NOT converged"
            print(f"{name}: {result.energy_per_atom:.5f} eV/atom, {result.steps} steps, {state}")
    return frames


def cmd_md(args: argparse.Namespace) -> int:
    from fastchgnet.cli.inputs import load_model, read_structures
    from fastchgnet.md.outputs import MDInterrupted
    from fastchgnet.md.settings import checked_integrator
    from fastchgnet.signals import stop_signals

    if args.ensemble == "nve" and args.thermostat not in (None, "none"):
        raise ValueError(f"--thermostat {args.thermostat}: nve runs without a thermostat")
    args.thermostat = args.thermostat or ("none" if args.ensemble == "nve" else "nose-hoover")
    refuse_existing(args.output, "-o", args.overwrite)
    refuse_existing(args.log, "--log", args.overwrite)
    check_frames_file(args.output, "-o", several=True, append=True)
    if args.log is not None:
        check_output_file(args.log, "--log", "md.log")
        if Path(args.log).resolve() == Path(args.output).resolve():
            raise ValueError(f"--log {args.log}: is the -o trajectory too; name another file")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.max_temperature is not None and not args.max_temperature > 0:
        raise ValueError(
            f"--max-temperature must be > 0 K (inf: never stop), got {args.max_temperature}"
        )
    settings = integrator_settings(args)
    checked_integrator(args.ensemble, args.thermostat, args.temperature, args.timestep, **settings)
    structures = read_structures([args.structure])
    if len(structures) != 1:
        raise ValueError(
            f"{args.structure}: holds {len(structures)} structures; md runs one "
            f"({args.structure}@-1 takes the last, @0 the first)"
        )
    moving = getattr(structures[0], "get_momenta", None)
    if moving is not None and moving().any():  # run_md keeps them
        from fastchgnet.md.integrators import add_integrator_constraints

        counted = structures[0].copy()  # the degrees of freedom the run's log counts
        add_integrator_constraints(counted, args.ensemble, args.thermostat)
        target = (
            "nve: no thermostat, --temperature is not used"
            if args.ensemble == "nve"
            else "--temperature sets the thermostat's target"
        )
        print(
            f"md: starting from the momenta stored in {args.structure}: "
            f"{counted.get_temperature():.1f} K ({target})",
            file=sys.stderr,
        )
    model = load_model(args.model, args.precision, args.device)
    try:
        with stop_signals():  # SIGTERM: SystemExit(143), reported as SIGINT is
            run(structures[0], model, args)
    except MDInterrupted as stop:
        print(
            f"md interrupted at step {stop.step}: {args.output} holds {stop.frames} frames",
            file=sys.stderr,
        )
        return stop.exit_code
    return 0


class _TqdmHandler(logging.Handler):
    """Log records as lines on stderr that leave a tqdm progress bar intact."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


@contextlib.contextmanager
def notices_on_stderr(enabled: bool, logger: str = "fastchgnet.md") -> Iterator[None]:
    """Within the block (where ``enabled``), ``logger``'s notices go to stderr, one line each:
    the ``fastchgnet.md`` compile decision (``run_md`` prints it only with its progress bar,
    and --quiet turns that off), or ``fastchgnet.compile``'s graphs compiled and shapes made
    (a relaxation that compiles sat silent for its minute or two of compile)."""
    if not enabled:
        yield
        return
    log = logging.getLogger(logger)
    handler, level = _TqdmHandler(), log.level
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def run(structure: Any, model: Any, args: argparse.Namespace) -> None:
    """``run_md`` of ``structure`` with ``model`` and the md command's options."""
    from fastchgnet.md.dynamics import run_md

    with notices_on_stderr(args.quiet):
        run_md(
            structure,
            model,
            ensemble=args.ensemble,
            thermostat=args.thermostat,
            temperature=args.temperature,
            timestep=args.timestep,
            steps=args.steps,
            loginterval=args.loginterval,
            trajectory=args.output,
            logfile=args.log,
            progress=not args.quiet,
            seed=args.seed,
            compiled=COMPILE_CHOICES[args.compile],
            max_temperature=args.max_temperature,
            **integrator_settings(args),
        )


def integrator_settings(args: argparse.Namespace) -> dict[str, float | None]:
    """The md command's settings of the integrator (``md.settings``: taut, taup, pressure,
    bulk_modulus and friction, in ``make_integrator``'s order; None: not given), which
    ``checked_integrator`` checks before anything runs and ``run_md`` takes."""
    names = ("taut", "taup", "pressure", "bulk_modulus", "friction")
    return {name: getattr(args, name) for name in names}
