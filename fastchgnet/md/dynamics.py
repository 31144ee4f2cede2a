"""Molecular dynamics with ASE's integrators: NVE, NVT (Nosé-Hoover chain, Langevin, Berendsen,
Bussi) and NPT (MTK Nosé-Hoover, Berendsen), driven by our Calculator.

Units at this interface: temperature K, timestep and coupling times fs, pressure GPa, bulk
modulus GPa, Langevin friction 1/fs. ASE's own units are applied here, once.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import all_changes
from ase.md import MDLogger
from tqdm import tqdm

from fastchgnet.errors import StructureError
from fastchgnet.files import check_output_folder
from fastchgnet.md.calculator import Calculator, as_atoms, capture_backend, compiled_potential
from fastchgnet.md.frames import frame_writer, stress_for_written_steps, written_step
from fastchgnet.md.integrators import Ensemble, add_integrator_constraints, make_integrator
from fastchgnet.md.outputs import MDDiverged, MDInterrupted
from fastchgnet.md.settings import checked_integrator
from fastchgnet.md.temperature_watch import TemperatureRunaway, check_max_temperature, watch_run
from fastchgnet.md.velocities import start_momenta
from fastchgnet.model.potential import Potential
from fastchgnet.signals import stop_signal

if TYPE_CHECKING:
    from fastchgnet.compile.decide import CompileDecision

log = logging.getLogger("fastchgnet.md")

#: Model calls an MD run's compiled potential runs eagerly first (``CompiledPotential``'s
#: ``patience``): a run from a 0 K crystal gains bonds and angles as it heats (in 45 NVT steps
#: at 300 K, LiMnO2's short bonds rose 15 % and its angles 33 %), so the one compiled shape is
#: made for the largest counts of these calls rather than the first call's.
MD_PATIENCE = 50
#: Margin on the bonds of that shape (angles get its square): the counts it is made from are
#: already the heated ones, so it only covers later fluctuations. A call that still fits no
#: shape runs eagerly; after ``MD_PATIENCE`` such calls the shape grows once (``MD_MAX_SHAPES``).
MD_HEADROOM = 0.05
MD_MAX_SHAPES = 2
#: the ``CompiledPotential`` options of ``run_md``'s compiled runs (stop 26's MD shapes, made
#: from the first call with ``CompiledPotential``'s default 20 % margin, held 1.37-1.42 padded
#: entries per real one, and the padding took the whole gain of capture on 32 and 64 atoms);
#: a TorchScript graph is built in a child process while the run's steps go on eagerly
#: (``compile.background``)
MD_COMPILE = {
    "headroom": MD_HEADROOM,
    "patience": MD_PATIENCE,
    "max_shapes": MD_MAX_SHAPES,
    "background": True,
}
#: Padded entries per real one of that shape over those of a shape made the same way from the
#: first call (``CompiledPotential.padding_for``, what the compile decision can see before the
#: run): the shape holds the peak of the heating calls, later calls hold less. bench_md (stop
#: 27) measured 1.04-1.10 (1.13-1.21 against 1.09-1.13), a whole 2000-step run on 32 atoms 1.09.
MD_SHAPE_SLACK = 1.1


def md_compile_options(steps: int) -> dict[str, Any]:
    """``MD_COMPILE`` for a run of ``steps`` steps: its patience is at most a quarter of the
    run, so a short run asked to compile (``compiled=True``) still runs mostly compiled."""
    return MD_COMPILE | {"patience": min(MD_COMPILE["patience"], steps // 4)}


def run_md(
    structure: Any,
    model: Potential | Any | None = None,
    *,
    ensemble: Ensemble = "nvt",
    thermostat: str | None = None,
    temperature: float = 300.0,
    starting_temperature: float | None = None,
    timestep: float = 2.0,
    steps: int = 1000,
    loginterval: int = 10,
    trajectory: str | Path | None = None,
    logfile: str | Path | None = None,
    progress: bool = True,
    seed: int | None = None,
    skin: float = 1.0,
    compiled: bool | str | None = None,
    max_temperature: float | None = None,
    **integrator: Any,
) -> Atoms:
    """Run molecular dynamics on one structure.

    Args:
        structure: pymatgen Structure or ASE Atoms (not modified; Atoms keep their momenta
            unless ``starting_temperature`` is given).
        model: the potential (default: FastCHGNet with the reference 0.3.0 weights).
        ensemble, thermostat, temperature (K), timestep (fs): see ``make_integrator`` (the
            thermostat defaults to nose-hoover for nvt and npt; nve takes none); further
            keywords (taut, taup, pressure, bulk_modulus, friction) go there too.
        starting_temperature: start at exactly this temperature, K (default: ``temperature``
            when the structure has no momenta): Maxwell-Boltzmann momenta drawn with ``seed``,
            less their centre-of-mass motion, scaled so that ``get_temperature()`` (3 degrees
            of freedom per atom less the constraints', Langevin's ``FixCom`` included) reads
            it (``start_momenta``). Atoms fixed by constraints (selective dynamics) keep their
            positions and zero momenta in every ensemble.
        steps: MD steps.
        loginterval: write trajectory frames and log lines every this many steps, and at the
            last step when ``steps`` is not a multiple of it (the run's end is always there).
        trajectory: frames file (``.traj``, ``.extxyz``, ...: ASE picks the format); a file
            already there is replaced. Every frame has energy, forces, stress and magmoms:
            the force call of a written step computes the stress too (``md.frames``).
        logfile: ASE MD log (time ps, energies eV/atom, temperature K; NPT also the stress
            tensor's 6 components in GPa, ASE's sign: the pressure is minus the mean of the
            first three; a file already there is replaced, not appended to); "-" for stdout.
        progress: show a tqdm progress bar.
        seed: random seed for initial velocities and stochastic thermostats (two independent
            streams of it, ``numpy.random.SeedSequence.spawn``).
        skin: Verlet skin of the calculator, Å.
        compiled: run a plain model as a ``CompiledPotential`` (True or "inductor", with
            ``md_compile_options``: the first ``MD_PATIENCE`` calls, at most a quarter of the
            run, run eagerly, then one shape made for the largest of them serves the run;
            "torchscript": ``compile.script``, one build for any sizes, every call unpadded
            from the first); None (default): compile when it
            pays over ``steps``, with the capture that pays most (``fastchgnet.compile.decide``:
            a cold CPU inductor build costs about half a minute, a warm start from the on-disk
            store about a second, a TorchScript build about three), and go back to eager if the
            compiled calls then measure no faster; the decision and its reason are logged
            (logger ``fastchgnet.md``) and printed with the progress bar.
        max_temperature: K: stop as diverged (MDDiverged) at a written step hotter; None
            (default): 10x the target (the start's temperature for NVE or a hotter start), at
            least 1e5 K; ``math.inf``: never. One warning line above 5x that and 1000 K above
            it, once a run (``md.temperature_watch``; printed with the bar, else logged).

    Returns:
        The final Atoms (positions, momenta, cell), its calculator holding the last results;
        ``info["max_temperature"]``: the hottest written step's temperature, K.

    Raises:
        FileNotFoundError: the folder of ``trajectory`` or ``logfile`` does not exist (before
            anything runs).
        MDInterrupted: SIGINT or SIGTERM (``signals.stop_signals``) stopped the run: the step
            reached and the frames written (the trajectory is complete up to them).
        MDDiverged: the dynamics made a geometry the model cannot take, or heated it past
            ``max_temperature`` (a ValueError in one line naming the step and the frames
            written).
    """
    if steps < 0 or loginterval < 1:
        raise ValueError(f"need steps >= 0 and loginterval >= 1, got {steps}, {loginterval}")
    ensemble, thermostat = checked_integrator(  # before the model is loaded
        ensemble, thermostat, temperature, timestep, **integrator
    )
    if starting_temperature is not None and starting_temperature < 0:
        raise ValueError(f"need starting_temperature >= 0 K, got {starting_temperature}")
    check_max_temperature(max_temperature)
    for what, path in (("trajectory", trajectory), ("logfile", logfile)):  # before the model
        if path is not None and path != "-":
            check_output_folder(path, what)
    if model is None:
        from fastchgnet.model.chgnet import FastCHGNet

        model = FastCHGNet.from_reference("0.3.0")
    atoms = as_atoms(structure)
    if (ensemble, thermostat) == ("npt", "nose-hoover") and atoms.constraints:
        raise ValueError(  # ASE's MTKNPT raises NotImplementedError when it is made
            "NPT with the nose-hoover thermostat (ASE's MTKNPT) cannot keep atoms fixed, and this "
            "structure fixes some (selective dynamics or constraints): use --thermostat "
            "berendsen, or remove them"
        )
    # barostats ask for stress every step: compute it with the forces, in one call
    stress = ensemble == "npt"
    options = md_compile_options(steps) | {"backend": capture_backend(compiled)}
    potential = compiled_potential(model, **options) if compiled else model
    atoms.calc = Calculator(potential, skin=skin, always_stress=stress)
    atoms.calc.stress_next = trajectory is not None  # the first frame's, with this call
    atoms.get_forces()  # a structure the model cannot take fails here, before anything else
    check = None
    if compiled is None:  # compile where it pays, and keep it only where it is faster
        written = loginterval if trajectory is not None and not stress else None
        check = choose_compiled(atoms, model, steps, stress, progress, written)
    if starting_temperature is None and not atoms.get_momenta().any():
        starting_temperature = temperature
    # two independent streams of one seed: one generator for both would give the thermostat's
    # first noise the very numbers the starting momenta were drawn from
    velocity_seed, thermostat_seed = np.random.SeedSequence(seed).spawn(2)
    if starting_temperature is not None:  # the temperature counts the integrator's FixCom
        add_integrator_constraints(atoms, ensemble, thermostat)
        start_momenta(atoms, starting_temperature, velocity_seed)
    dyn = make_integrator(
        atoms,
        ensemble,
        thermostat,
        temperature=temperature,
        timestep=timestep,
        seed=thermostat_seed,
        **integrator,
    )
    if check is not None:
        dyn.attach(check, interval=1)
    frames = 0  # written to ``trajectory``

    def write_frame() -> None:
        nonlocal frames
        if written_step(dyn.nsteps, steps, loginterval):
            getattr(writer, "write", writer)()  # a Trajectory, or a function
            frames += 1

    if trajectory is not None:
        writer = frame_writer(atoms, Path(trajectory))
        dyn.attach(write_frame, interval=1)
    if logfile is not None:
        # NPT computes the stress every step anyway: log it (NVT would pay a derivative)
        logger = MDLogger(dyn, atoms, str(logfile), stress=stress, peratom=True, mode="w")
        dyn.attach(lambda: written_step(dyn.nsteps, steps, loginterval) and logger(), interval=1)
    watch = watch_run(  # after the frame and the log line: a run it stops has them
        dyn, ensemble, temperature, steps, loginterval, max_temperature,
        lambda line: _say(line, progress, warning=True),
    )  # fmt: skip
    if trajectory is not None and not stress:  # after the others: ``check`` makes calls
        dyn.attach(stress_for_written_steps(dyn, atoms, steps, loginterval), interval=1)
    with tqdm(total=steps, desc=f"md {ensemble}", unit="step", disable=not progress) as bar:
        dyn.attach(lambda: bar.update(dyn.nsteps - bar.n), interval=1)
        try:
            dyn.run(steps)
        except (KeyboardInterrupt, SystemExit) as stop:
            signum = stop_signal(stop)
            if signum is None:
                raise
            raise MDInterrupted(int(dyn.nsteps), frames, signum) from None
        except StructureError as error:  # the first call took the structure: the run made it
            raise MDDiverged(int(dyn.nsteps) + 1, steps, frames, str(error)) from None
        except TemperatureRunaway as hot:
            raise MDDiverged(hot.step, steps, frames, str(hot), watch.causes) from None
        finally:  # a graph still building in a child process would serve no step
            for used in {id(p): p for p in (potential, atoms.calc.potential)}.values():
                getattr(used, "cancel_builds", lambda: None)()
            if trajectory is not None and hasattr(writer, "close"):
                writer.close()
    atoms.info["max_temperature"] = watch.hottest
    return atoms


def call_seconds(atoms: Atoms, repeats: int = 5) -> float:
    """Seconds of one energy-and-forces call of ``atoms``'s calculator: the fastest of
    ``repeats``. On a shared machine a burst of load inflates a few calls; the median of three
    once measured 85 ms for a 32-atom eager call whose MD steps took 58 ms, and chose a compile
    that lost (bench/bench_md.py). The calculator keeps the results it had (the stress of a
    frame about to be written)."""
    times = []
    kept = dict(atoms.calc.results)
    for _ in range(repeats):
        start = time.perf_counter()
        atoms.calc.calculate(atoms, ["energy", "forces"], list(all_changes))
        times.append(time.perf_counter() - start)
    atoms.calc.results = kept
    return min(times)


def timing_calls(steps: int) -> int:
    """Eager calls the compile decision of a ``steps``-step run times (``call_seconds``): five,
    at most a hundredth of the run, at least one. A short run cannot repay a compile anyway,
    and timing five calls would add a tenth to a 50-step run."""
    return min(5, max(1, steps // 100))


def _say(message: str, progress: bool, warning: bool = False) -> None:
    """Log ``message`` (logger ``fastchgnet.md``; a ``warning`` at warning level unless
    printed) and, with the progress bar, print it on stderr above the bar."""
    log.log(logging.WARNING if warning and not progress else logging.INFO, message)
    if progress:
        tqdm.write(message, file=sys.stderr)


def choose_compiled(
    atoms: Atoms,
    model: Any,
    steps: int,
    stress: bool,
    progress: bool,
    eager_every: int | None = None,
) -> Callable[[], None] | None:
    """Give ``atoms``' calculator (a ``Calculator`` running ``model`` eagerly) a compiled
    potential of ``model`` when ``md_compile_decision`` says it pays over ``steps`` steps, and
    say what it did and why. The calculator is kept (its neighbour search and settings carry
    over); only its potential changes, and ``crystal_fea`` leaves its results while compiled.
    Returns the MD observer that keeps the compiled potential only where it is faster
    (``_keep_if_faster``), or None. ``eager_every``: see ``md_compile_decision``."""
    decided = md_compile_decision(atoms, model, steps, stress, eager_every)
    if decided is None:
        return None
    decision, potential = decided
    _say(decision.reason, progress)
    if not decision.compile:
        return None
    calc = atoms.calc
    eager = (calc.potential, calc.features)
    calc.potential, calc.features = potential, False
    return _keep_if_faster(atoms, potential, eager, progress)


def _keep_if_faster(
    atoms: Atoms,
    potential: Any,
    eager: tuple[Potential, bool],
    progress: bool,
) -> Callable[[], None]:
    """An MD observer that, at the first step after ``potential`` has built its first graph
    (a padded one after its ``patience`` eager calls), times its calls against ``eager``'s
    (``paired_call_seconds``) and gives ``atoms``' calculator back its ``eager`` (potential,
    features) when they are no faster: a padded shape can lose at one thread. It does nothing
    after that step."""
    done = False

    def check() -> None:
        nonlocal done
        if done or not potential.has_graphs:
            return
        done = True
        compiled, eager_seconds = paired_call_seconds(atoms, (potential, False), eager)
        if compiled >= eager_seconds:
            atoms.calc.potential, atoms.calc.features = eager
            _say(
                f"compiled calls took {compiled * 1e3:.0f} ms, no faster than eager "
                f"{eager_seconds * 1e3:.0f} ms: the run goes on eager",
                progress,
            )

    return check


def paired_call_seconds(
    atoms: Atoms, first: tuple[Potential, bool], second: tuple[Potential, bool], repeats: int = 5
) -> tuple[float, float]:
    """Seconds of one energy-and-forces call of ``atoms``' calculator running ``first`` and
    ``second`` (each a potential and its ``features`` setting), each the fastest of
    ``repeats`` (``call_seconds``), the two timed in turns: a shared machine's speed drifts
    by half within seconds, and an eager time taken at the decision, 250 steps earlier, once
    sent a faster compiled run back to eager (16 against 13 ms, where side by side they took
    10 and 14 ms). The calculator keeps its potential and results."""
    calc = atoms.calc
    kept = (calc.potential, calc.features)
    seen: tuple[list[float], list[float]] = ([], [])
    try:
        for _ in range(repeats):
            for times, (potential, features) in zip(seen, (first, second), strict=True):
                calc.potential, calc.features = potential, features
                times.append(call_seconds(atoms, 1))
    finally:
        calc.potential, calc.features = kept
    return min(seen[0]), min(seen[1])


def md_compile_decision(
    atoms: Atoms, model: Any, steps: int, stress: bool, eager_every: int | None = None
) -> tuple[CompileDecision, Potential] | None:
    """Whether ``steps`` MD steps of ``atoms`` (carrying an eager Calculator of ``model``) gain
    from compiling, and the ``CompiledPotential`` to run if so: eager force calls are timed,
    the compile cost is what that potential expects for the shape, and a compiled call is
    expected to cost what ``compiled_call_model`` says for the device (on a CPU: for its
    padding; see ``fastchgnet.compile.decide``). ``eager_every``: one step in this many is a
    written frame, which takes its stress from the eager model under a padded capture
    (inductor: ``md.calculator.stress_runs_eagerly``), so that capture saves nothing there;
    a TorchScript capture runs those frames on a stress graph of its own, priced as its force
    calls. None when ``model`` is not a plain FastCHGNet (a given potential is used as it
    is)."""
    from fastchgnet.compile.decide import choose_capture, compiled_call_model
    from fastchgnet.model.chgnet import FastCHGNet

    if not isinstance(model, FastCHGNet):
        return None
    graphs = [atoms.calc.graph(atoms)]
    eager_seconds = call_seconds(atoms, timing_calls(steps))
    device = next(model.parameters()).device.type
    options = md_compile_options(steps)

    def price(backend: str) -> tuple[float, float, Potential]:
        potential = compiled_potential(model, backend=backend, **options)
        slack = MD_SHAPE_SLACK if potential.pads else 1.0  # TorchScript runs the graphs as is
        padding = potential.padding_for(graphs) * slack if device == "cpu" else 1.0
        fraction, cold = compiled_call_model(
            device, eager_seconds, padding, potential.store, backend, options["background"]
        )
        if eager_every and potential.pads:  # its written frames run at eager's cost
            fraction = 1.0 - (1.0 - fraction) * (1.0 - 1.0 / eager_every)
        expected = potential.expected_compile_seconds(graphs, stress=stress, cold_estimate=cold)
        return fraction, expected, potential

    calls = max(steps - options["patience"], 0)  # the first calls run eagerly either way
    return choose_capture(calls, eager_seconds, device, price, what=f"{steps}-step MD")
