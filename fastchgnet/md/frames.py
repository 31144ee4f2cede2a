"""The frames an MD run writes: the steps written (every ``loginterval`` and the last), the
writer of a trajectory file, and the stress of exactly those steps.

NVT and NVE skip the stress derivative at every step (no barostat asks for it); the force call
of a step that will be written computes it too (``Calculator.stress_next``), so every frame
carries energy, forces and stress, as the reference's trajectories do, at no extra model call
(which potential answers it: ``md.calculator.stress_runs_eagerly``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ase import Atoms
from ase.md.md import MolecularDynamics


def written_step(step: int, steps: int, loginterval: int) -> bool:
    """Whether step ``step`` (0 the start) of a ``steps``-step run is written: every
    ``loginterval`` steps, and the last step (a run that ends between log intervals)."""
    return step % loginterval == 0 or step == steps


def stress_for_written_steps(
    dyn: MolecularDynamics, atoms: Atoms, steps: int, loginterval: int
) -> Any:
    """An MD observer (attach it every step, after the others) that asks ``atoms``'
    calculator (a ``Calculator``) for the stress with the forces of the next step when that
    step will be written (``written_step``)."""

    def ask() -> None:
        atoms.calc.stress_next = written_step(dyn.nsteps + 1, steps, loginterval)

    return ask


def frame_writer(atoms: Atoms, path: Path) -> Any:
    """An observer that appends the current frame (with the calculator's results: energy,
    forces, stress where computed, magmoms) to ``path``: ASE's Trajectory for ``.traj``,
    ``ase.io.write`` (format from the suffix) otherwise. A file already there is replaced."""
    from ase.io import Trajectory, write

    path.unlink(missing_ok=True)
    if path.suffix == ".traj":
        return Trajectory(str(path), "w", atoms)

    def write_frame() -> None:
        write(str(path), atoms, append=True)

    return write_frame
