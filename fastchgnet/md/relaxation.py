"""The relaxation loops behind ``fastchgnet.md.relax``: one structure's state (``Relaxation``:
atoms, calculator, ASE optimizer, frames), ASE's own loop one structure after another
(``run_each``), and the lockstep loop (``run_lockstep``) that steps up to a batch of optimizers
together with one model call per step, a finished structure's slot going to the next input.
A structure the model cannot take (``StructureError``) ends the run with the results so far
attached to the error, or with ``skip_failed`` becomes a ``RelaxResult`` with its ``error``;
a signal ends it in ``RelaxInterrupted``. Units: eV, Å, eV/Å.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from itertools import islice

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.optimize import BFGS, FIRE
from tqdm import tqdm

from fastchgnet.data.graph import CrystalGraph
from fastchgnet.errors import StructureError
from fastchgnet.md.calculator import Calculator, evaluate_graphs
from fastchgnet.md.cell_filter import CachedFrechetCellFilter
from fastchgnet.md.outputs import RelaxInterrupted, RelaxResult
from fastchgnet.model.potential import Potential, check_elements
from fastchgnet.signals import stop_signal

OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS}


class Relaxation:
    """One structure's atoms, calculator, optimizer and recorded frames."""

    def __init__(
        self,
        atoms: Atoms,
        calc: Calculator,
        optimizer: str,
        relax_cell: bool,
        record: bool,
    ) -> None:
        self.atoms, self.calc = atoms, calc
        atoms.calc = calc
        target = CachedFrechetCellFilter(atoms) if relax_cell else atoms
        self.optimizer = OPTIMIZERS[optimizer](target, logfile=None)
        self.frames: list[Atoms] = []
        self.record = record
        self.converged = False

    def snapshot(self) -> None:
        """Append the current geometry with its (cached) results to the frames."""
        if self.record:
            frame = self.atoms.copy()
            frame.calc = SinglePointCalculator(frame, **self.calc.results)
            self.frames.append(frame)

    def max_force(self) -> float:
        """Largest force on the optimizer's degrees of freedom (atoms and cell), eV/Å."""
        forces = self.optimizer.atoms.get_forces()
        return float(np.sqrt((forces**2).sum(axis=1).max()))

    def result(self) -> RelaxResult:
        """The outcome; the atoms keep their final results in a SinglePointCalculator, so a
        finished structure no longer holds the model's calculator and neighbour cache."""
        self.atoms.calc = SinglePointCalculator(self.atoms, **self.calc.results)
        return RelaxResult(
            atoms=self.atoms,
            energy=float(self.atoms.get_potential_energy()),
            converged=self.converged,
            steps=int(self.optimizer.nsteps),
            frames=self.frames,
        )

    def failed(self, error: StructureError) -> RelaxResult:
        """The outcome of a structure the model could not take at a later step (atoms that
        came too close, one left without neighbours): its geometry then, energy NaN."""
        atoms = self.atoms.copy()
        atoms.calc = None
        steps = int(self.optimizer.nsteps)
        return failure(atoms, error, steps, self.frames)

    def stopped(self) -> RelaxResult:
        """The outcome of a relaxation stopped by a signal: the current geometry, without the
        calculator's results (they may belong to the step before), energy NaN."""
        atoms = self.atoms.copy()
        atoms.calc = None
        steps = int(self.optimizer.nsteps)
        return RelaxResult(atoms, float("nan"), False, steps, self.frames, interrupted=True)


def run_each(
    runs: Iterator[Relaxation | RelaxResult],
    fmax: float,
    steps: int,
    bar: tqdm,
    skip_failed: bool = False,
) -> list[RelaxResult]:
    """ASE's own optimizer loop for one structure after another (``skip_failed``: see
    ``relax``; a structure that failed to start comes as its RelaxResult)."""
    results: dict[int, RelaxResult] = {}
    active: list[tuple[int, Relaxation]] = []
    try:
        for index, run in enumerate(runs):
            if isinstance(run, RelaxResult):
                results[index], active = run, []
                bar.update()
                continue
            active = [(index, run)]
            run.optimizer.attach(run.snapshot)
            try:
                run.converged = bool(run.optimizer.run(fmax=fmax, steps=steps))
                results[index] = run.result()
            except StructureError as error:
                if not skip_failed:
                    active = []  # the one that failed is not kept
                    raise
                results[index] = run.failed(error)
            bar.update()
    except (KeyboardInterrupt, SystemExit) as stop:
        raise interrupted(stop, results, active) from None
    except StructureError as error:
        raise with_results(error, results, active) from None
    return [results[index] for index in range(len(results))]


def failure(atoms: Atoms, error: StructureError, steps: int, frames: list[Atoms]) -> RelaxResult:
    """The RelaxResult of a structure the model could not take (``relax(skip_failed=True)``),
    said in a warning."""
    warnings.warn(f"{error}: not relaxed", stacklevel=4)
    return RelaxResult(atoms, float("nan"), False, steps, frames, error=str(error))


def with_results(
    error: StructureError, results: dict[int, RelaxResult], active: list[tuple[int, Relaxation]]
) -> StructureError:
    """``error`` carrying ``results`` and the current geometry of the ``active`` structures
    not among them (``results``, as ``RelaxInterrupted``'s; the structure that failed is not
    kept), so a failure late in a long run loses nothing finished."""
    kept = results | {i: run.stopped() for i, run in active if i not in results}
    error.results = dict(sorted(kept.items()))  # type: ignore[attr-defined]
    return error


def interrupted(
    stop: BaseException, results: dict[int, RelaxResult], active: list[tuple[int, Relaxation]]
) -> BaseException:
    """``RelaxInterrupted`` with ``results`` and the current geometry of the ``active``
    structures not among them, when ``stop`` is a signal's (``signals.stop_signal``); else
    ``stop``."""
    signum = stop_signal(stop)
    if signum is None:
        return stop
    kept = results | {i: run.stopped() for i, run in active if i not in results}
    return RelaxInterrupted(kept, signum)


def run_lockstep(
    runs: Iterator[Relaxation],
    model: Potential,
    fmax: float,
    steps: int,
    stress: bool,
    batch_size: int,
    bar: tqdm,
    skip_failed: bool = False,
    choose: Callable[[float, list[CrystalGraph]], Potential | None] | None = None,
) -> list[RelaxResult]:
    """Step up to ``batch_size`` optimizers together: evaluate the active structures in one
    call, then step each; a finished structure's slot goes to the next from ``runs`` (one
    that failed to start comes as its RelaxResult; ``skip_failed``: see ``relax``).
    ``choose``, given the second call's seconds and graphs (the first warms the eager path
    up; a cold call would make eager look slow and compiling cheap), may return the potential
    for every later call. Results in the order of ``runs``."""
    queue = enumerate(runs)
    active: list[tuple[int, Relaxation]] = []
    results: dict[int, RelaxResult] = {}
    calls = 0
    try:
        while active := fill_slots(active, queue, batch_size, results, bar):
            graphs, stepping = [], []
            for index, run in active:
                try:
                    graphs.append(run.calc.graph(run.atoms))
                    check_elements(graphs[-1], model.config.max_num_elements)
                except StructureError as error:
                    if not skip_failed:  # the one that failed is not kept
                        active = [entry for entry in active if entry[1] is not run]
                        raise
                    graphs = graphs[: len(stepping)]
                    results[index] = run.failed(error)
                    bar.update()
                    continue
                stepping.append((index, run))
            if not (active := stepping):
                continue
            start = time.perf_counter()
            answers = evaluate_graphs(model, graphs, stress=stress)
            calls += 1
            if choose is not None and calls == 2:
                model = choose(time.perf_counter() - start, graphs) or model
                choose = None
            for (_, run), answer in zip(active, answers, strict=True):
                run.calc.store(run.atoms, answer)
            still_active = []
            for index, run in active:
                run.snapshot()
                run.converged = run.max_force() < fmax
                if run.converged or run.optimizer.nsteps >= steps:
                    results[index] = run.result()
                    bar.update()
                    continue
                run.optimizer.step()
                run.optimizer.nsteps += 1
                still_active.append((index, run))
            active = still_active
    except (KeyboardInterrupt, SystemExit) as stop:
        raise interrupted(stop, results, active) from None
    except StructureError as error:
        raise with_results(error, results, active) from None
    finally:
        getattr(model, "cancel_builds", lambda: None)()  # a graph still building serves no call
    return [results[index] for index in range(len(results))]


def fill_slots(
    active: list[tuple[int, Relaxation]],
    queue: Iterator[tuple[int, Relaxation | RelaxResult]],
    batch_size: int,
    results: dict[int, RelaxResult],
    bar: tqdm,
) -> list[tuple[int, Relaxation]]:
    """``active`` with the free slots filled from ``queue``; a structure that failed to start
    (its RelaxResult) goes to ``results`` and its slot to the next."""
    while len(active) < batch_size:
        taken = list(islice(queue, batch_size - len(active)))
        if not taken:
            break
        for index, run in taken:
            if isinstance(run, RelaxResult):
                results[index] = run
                bar.update()
            else:
                active = [*active, (index, run)]
    return active
