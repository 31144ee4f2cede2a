"""What a relaxation hands back: a ``RelaxResult`` per structure, the trajectory file of every
structure's steps, and ``RelaxInterrupted``, which carries the results of a run stopped by
SIGINT or SIGTERM (the structures finished, and the current geometry of those relaxing); and
``MDInterrupted`` and ``MDDiverged``, what an MD run stopped by a signal, or by a geometry the
model cannot take, says of itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms

from fastchgnet.signals import Stopped


@dataclass
class RelaxResult:
    """One relaxed structure.

    atoms: final geometry (ASE Atoms, its calculator holding the final results) |
    energy: final total energy, eV | converged: max force (and cell force) < fmax |
    steps: optimizer steps taken | frames: the trajectory, when one was asked for |
    interrupted: stopped by a signal while relaxing (atoms: its geometry then, no energy) |
    error: why the model could not take it (``relax(skip_failed=True)``; atoms: its geometry
    then, or the input as given; energy NaN), else None.
    """

    atoms: Atoms
    energy: float
    converged: bool
    steps: int
    frames: list[Atoms] = field(default_factory=list)
    interrupted: bool = False
    error: str | None = None

    @property
    def energy_per_atom(self) -> float:
        """Final energy, eV/atom (NaN without atoms or energy)."""
        return self.energy / len(self.atoms) if len(self.atoms) else float("nan")

    @property
    def structure(self) -> Any:
        """The final geometry as a pymatgen Structure, with final magmoms (μB) as site property."""
        from pymatgen.io.ase import AseAtomsAdaptor

        structure = AseAtomsAdaptor.get_structure(self.atoms.copy())
        magmoms = self.atoms.calc.results.get("magmoms") if self.atoms.calc else None
        if magmoms is not None:
            structure.add_site_property("magmom", [float(m) for m in magmoms])
        return structure


class RelaxInterrupted(Stopped):
    """A relaxation stopped by signal ``signum`` (SIGINT or SIGTERM: ``signals.Stopped``, a
    KeyboardInterrupt; ``exit_code`` 130 or 143).

    results: input index -> ``RelaxResult`` of each structure finished (converged or out of
    steps) and of each still relaxing (its current geometry without energies, ``interrupted``
    set); structures not started are absent."""

    def __init__(self, results: Mapping[int, RelaxResult], signum: int) -> None:
        super().__init__(signum, f"relaxation interrupted ({len(results)} structure(s) kept)")
        self.results = dict(sorted(results.items()))


class MDInterrupted(Stopped):
    """An MD run stopped by signal ``signum`` (SIGINT or SIGTERM: ``signals.Stopped``, a
    KeyboardInterrupt; ``exit_code`` 130 or 143).

    step: the steps taken | frames: the trajectory frames written (all complete)."""

    def __init__(self, step: int, frames: int, signum: int) -> None:
        super().__init__(signum, f"MD interrupted at step {step} ({frames} frames written)")
        self.step, self.frames = step, frames


#: what drove a run to a geometry the model cannot take, as ``MDDiverged`` says it
DRIVEN = "the timestep, pressure, temperature or thermostat times drove it there"


class MDDiverged(ValueError):
    """An MD run whose dynamics made a geometry the model cannot take (non-finite positions
    or cell, isolated or overlapping atoms: the first call took the structure, so the
    settings drove it there), or heated it past any temperature a structure survives
    (``md.temperature_watch``). One line: the step, the problem, its likely ``causes``, the
    frames written.

    step: the step being taken (1-based) | frames: the trajectory frames written (all
    complete)."""

    def __init__(
        self, step: int, steps: int, frames: int, problem: str, causes: str = DRIVEN
    ) -> None:
        super().__init__(
            f"md diverged at step {step} of {steps}: {problem} ({causes}); "
            f"{frames} frame(s) written"
        )
        self.step, self.frames = step, frames


def write_frames(
    path: str | Path, results: Sequence[RelaxResult] | Mapping[int, RelaxResult]
) -> None:
    """Write every result's frames to one file (atomically), tagged with structure index (its
    position in the input; a mapping gives it as the key) and step."""
    from fastchgnet.files import write_frames_atomic

    items = results.items() if isinstance(results, Mapping) else enumerate(results)
    frames = []
    for index, result in items:
        for step, frame in enumerate(result.frames):
            frame.info.update(structure=index, step=step)
            frames.append(frame)
    write_frames_atomic(path, frames)
