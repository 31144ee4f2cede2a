"""Structure relaxation with ASE optimizers (FIRE, BFGS), one structure at a time or batched.

Every structure gets its own ASE optimizer, over a ``FrechetCellFilter`` when the cell relaxes.
Batched (the default for several structures), the optimizers advance in lockstep: each step
evaluates every unconverged structure in one model call, hands each calculator its answer,
then steps every optimizer, which reads the cached forces. Structures drop out as they
converge. The optimizer maths is ASE's, so both paths follow the same trajectories (up to
floating-point noise from batching).

Compiled (``compiled=True`` or a ``CompiledPotential``), every calculator shares one potential:
the first lockstep call fixes a padded capacity with headroom, and later calls, with fewer
active structures, reuse it (converged structures leave empty slots), so the run compiles once
unless a structure outgrows the bond or angle margin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE
from tqdm import tqdm

from fastchgnet.data.graph import structure_name
from fastchgnet.md.calculator import Calculator, as_atoms, compiled_potential, evaluate_graphs
from fastchgnet.model.potential import Potential, as_potential, is_structure

OptimizerName = Literal["FIRE", "BFGS"]
OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS}
#: bond and angle margin of ``relax(compiled=True)``: a cell relaxation may change the bond and
#: angle counts by tens of percent, and every regrowth compiles again
RELAX_HEADROOM = 0.3


@dataclass
class RelaxResult:
    """One relaxed structure.

    atoms: final geometry (ASE Atoms, its calculator holding the final results) |
    energy: final total energy, eV | converged: max force (and cell force) < fmax |
    steps: optimizer steps taken | frames: the trajectory, when one was asked for.
    """

    atoms: Atoms
    energy: float
    converged: bool
    steps: int
    frames: list[Atoms] = field(default_factory=list)

    @property
    def energy_per_atom(self) -> float:
        """Final energy, eV/atom."""
        return self.energy / len(self.atoms)

    @property
    def structure(self) -> Any:
        """The final geometry as a pymatgen Structure, with final magmoms (μB) as site property."""
        from pymatgen.io.ase import AseAtomsAdaptor

        structure = AseAtomsAdaptor.get_structure(self.atoms.copy())
        magmoms = self.atoms.calc.results.get("magmoms") if self.atoms.calc else None
        if magmoms is not None:
            structure.add_site_property("magmom", [float(m) for m in magmoms])
        return structure


class _CachedFrechetCellFilter(FrechetCellFilter):
    """ASE's FrechetCellFilter, remembering its generalised forces (a matrix log and nine
    Fréchet derivatives of the matrix exponential) for the last geometry and results: the
    lockstep loop asks twice per step, for the convergence test and for the optimizer."""

    _cache: tuple[bytes, np.ndarray] | None = None

    def get_forces(self, *args: Any, **kwargs: Any) -> np.ndarray:
        atoms = self.atoms
        key = b"".join(
            np.ascontiguousarray(x).tobytes()
            for x in (atoms.positions, atoms.cell.array, atoms.get_forces(), atoms.get_stress())
        )
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, super().get_forces(*args, **kwargs))
        return self._cache[1].copy()


class _Relaxation:
    """One structure's atoms, calculator, optimizer and recorded frames."""

    def __init__(
        self,
        atoms: Atoms,
        calc: Calculator,
        optimizer: OptimizerName,
        relax_cell: bool,
        record: bool,
    ) -> None:
        self.atoms, self.calc = atoms, calc
        atoms.calc = calc
        target = _CachedFrechetCellFilter(atoms) if relax_cell else atoms
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
        return RelaxResult(
            atoms=self.atoms,
            energy=float(self.atoms.get_potential_energy()),
            converged=self.converged,
            steps=int(self.optimizer.nsteps),
            frames=self.frames,
        )


def relax(
    structures: Any,
    model: Potential | Any | None = None,
    *,
    fmax: float = 0.1,
    steps: int = 500,
    relax_cell: bool = True,
    optimizer: OptimizerName = "FIRE",
    trajectory: str | Path | None = None,
    batched: bool = True,
    batch_size: int = 64,
    skin: float = 1.0,
    progress: bool = False,
    compiled: bool = False,
) -> RelaxResult | list[RelaxResult]:
    """Relax one or many structures until every force is below ``fmax``.

    Args:
        structures: a pymatgen Structure / ASE Atoms, or a sequence of them (not modified).
        model: the potential (default: FastCHGNet with the reference 0.3.0 weights).
        fmax: force threshold, eV/Å (the cell's generalised forces included).
        steps: most optimizer steps per structure.
        relax_cell: relax lattice vectors too (FrechetCellFilter).
        optimizer: "FIRE" or "BFGS" (ASE's).
        trajectory: write every structure's steps here (extxyz, traj, ...: ASE picks the format
            from the suffix); frames carry ``info["structure"]`` and ``info["step"]``.
        batched: advance all structures together, one model call per step (up to
            ``batch_size`` structures a call); False runs ASE's ``optimizer.run`` per structure.
        skin: Verlet skin of every calculator, Å.
        progress: show a progress bar.
        compiled: run a plain model as a ``CompiledPotential`` (inductor, ``RELAX_HEADROOM``;
            compiling costs tens of seconds on CPU, so it pays off for long runs).

    Returns:
        A RelaxResult for one structure, a list for a sequence.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {optimizer!r}: use one of {sorted(OPTIMIZERS)}")
    if fmax <= 0 or steps < 0 or batch_size < 1:
        raise ValueError(
            f"need fmax > 0, steps >= 0, batch_size >= 1; got {fmax}, {steps}, {batch_size}"
        )
    if model is None:
        from fastchgnet.model.chgnet import FastCHGNet

        model = FastCHGNet.from_reference("0.3.0")
    if compiled:  # cells change in relaxation: more headroom than for MD
        model = compiled_potential(model, headroom=RELAX_HEADROOM)
    model = as_potential(model)  # one potential shared by every calculator
    single = is_structure(structures)
    items = [structures] if single else list(structures)
    if not items:
        raise ValueError("no structures to relax")
    record = trajectory is not None
    runs = [
        _Relaxation(
            as_atoms(s),
            Calculator(  # the cell filter asks for forces, then stress: one call for both
                model,
                skin=skin,
                always_stress=relax_cell,
                name=structure_name(s, None if single else k),
            ),
            optimizer,
            relax_cell,
            record,
        )
        for k, s in enumerate(items)
    ]
    if batched:
        _run_lockstep(runs, model, fmax, steps, relax_cell, batch_size, progress)
    else:
        for run in tqdm(runs, desc="relax", unit="structure", disable=not progress):
            run.optimizer.attach(run.snapshot)
            run.converged = bool(run.optimizer.run(fmax=fmax, steps=steps))
    results = [run.result() for run in runs]
    if trajectory is not None:
        write_frames(trajectory, results)
    return results[0] if single else results


def _run_lockstep(
    runs: list[_Relaxation],
    model: Potential,
    fmax: float,
    steps: int,
    stress: bool,
    batch_size: int,
    progress: bool,
) -> None:
    """Step every optimizer together: evaluate all active structures, then step each."""
    active = list(runs)
    with tqdm(total=len(runs), desc="relax", unit="structure", disable=not progress) as bar:
        while active:
            for start in range(0, len(active), batch_size):
                chunk = active[start : start + batch_size]
                graphs = [run.calc.graph(run.atoms) for run in chunk]
                for run, results in zip(
                    chunk, evaluate_graphs(model, graphs, stress=stress), strict=True
                ):
                    run.calc.store(run.atoms, results)
            still_active = []
            for run in active:
                run.snapshot()
                run.converged = run.max_force() < fmax
                if run.converged or run.optimizer.nsteps >= steps:
                    bar.update()
                    continue
                run.optimizer.step()
                run.optimizer.nsteps += 1
                still_active.append(run)
            active = still_active


def write_frames(path: str | Path, results: list[RelaxResult]) -> None:
    """Write every result's frames to one file, tagged with structure index and step."""
    from ase.io import write

    frames = []
    for index, result in enumerate(results):
        for step, frame in enumerate(result.frames):
            frame.info.update(structure=index, step=step)
            frames.append(frame)
    write(str(path), frames)
