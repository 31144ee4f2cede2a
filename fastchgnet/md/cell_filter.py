"""ASE's FrechetCellFilter with its 3x3 matrix functions done once per geometry.

ASE's filter (``ase.filters.FrechetCellFilter``) gives an optimizer the atoms' positions and the
matrix log of the cell's deformation gradient F, and turns the model's forces and stress into
generalised forces. For one structure and one optimizer step it calls scipy's ``logm`` twice
(about 0.5 ms each on a 3x3: the positions read it for F times the cell factor, the forces
for F), ``expm`` once and ``expm_frechet`` nine times (about 45 us each, one per strain
direction): about 1.4 ms, a fifth of the wall time of a batched relaxation of 16 small cells
(``bench/bench_relax.py``).

``CachedFrechetCellFilter`` keeps ASE's maths and code and swaps the three scipy functions on
its ``CellUtility`` for equivalents that reuse work (``_MatrixFunctions``):
- the nine Fréchet derivatives at one log are taken together, as the upper-right blocks of
  the exponentials of nine 6x6 block matrices [[A, E], [0, A]] in one batched ``expm``
  (about 50 us against 400);
- ``logm`` of a matrix seen last returns the last answer (the same bytes);
- ``logm`` of an F that the filter has just set from a log Y (``set_positions``: c F =
  expm(Y) for a scalar c > 0, up to the cell's round-off; ASE takes the log of the
  deformation gradient times its ``cell_factor`` (the atom count by default) for the
  positions, of the gradient alone for the forces) returns Y - log(c) I, when c F agrees
  within ``LOG_ROUNDTRIP_TOLERANCE`` and Y is safely a principal log (``LOG_BRANCH_LIMIT``);
  otherwise scipy's ``logm`` runs.
Every result agrees with ASE's within float64 round-off (tests/md/test_cell_filter.py), and
the filter remembers its generalised forces for the last geometry and model results: the
lockstep loop of ``fastchgnet.md.relax`` asks twice per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase.filters import FrechetCellFilter
from scipy.linalg import expm, expm_frechet, logm

#: largest |c F - expm(Y)|, relative to expm(Y)'s largest entry, for which logm(F) is taken
#: from the log Y just set (as Y - log(c) I)
LOG_ROUNDTRIP_TOLERANCE = 1e-12
#: largest Frobenius norm of Y's traceless part for that shortcut: every eigenvalue of Y then
#: has an imaginary part below pi, so Y is the principal log of expm(Y) (cell strains and
#: rotations in a relaxation are far smaller)
LOG_BRANCH_LIMIT = 1.0


class _MatrixFunctions:
    """``logm``, ``expm`` and ``expm_frechet`` of 3x3 float64 matrices for one filter, with
    the reuse described in the module docstring; same signatures as scipy's."""

    def __init__(self) -> None:
        self._log: tuple[bytes, np.ndarray] | None = None  # (F bytes, logm(F))
        self._exp: tuple[np.ndarray, np.ndarray] | None = None  # (Y, expm(Y))
        self._frechet: tuple[bytes, np.ndarray] | None = None  # (A bytes, (9, 3, 3))

    def expm(self, y: np.ndarray) -> np.ndarray:
        """(3, 3) -> (3, 3) matrix exponential; Y is remembered for ``logm``."""
        value = expm(y)
        if not np.iscomplexobj(y):  # a copy: the caller may change what it gets in place
            self._exp = (np.array(y, dtype=float), value.copy())
        return value

    def logm(self, f: np.ndarray, **kwargs: Any) -> Any:
        """(3, 3) -> (3, 3) principal matrix log, as scipy's ``logm`` (which runs, uncached,
        whenever ``kwargs`` are given)."""
        if kwargs or np.iscomplexobj(f):
            return logm(f, **kwargs)
        f = np.asarray(f, dtype=float)
        key = f.tobytes()
        if self._log is None or self._log[0] != key:
            value = self._log_of_last_exp(f)
            self._log = (key, logm(f) if value is None else value)
        return self._log[1].copy()

    def _log_of_last_exp(self, f: np.ndarray) -> np.ndarray | None:
        """log(F) from the last log Y set, where c F = expm(Y) for a scalar c > 0 (ASE takes
        the log of the deformation gradient times the cell factor for the positions, and of
        the gradient alone for the forces): then log(F) = Y - log(c) I. None when F is not
        such a multiple within round-off, or Y is not safely a principal log."""
        if self._exp is None or f.shape != (3, 3):
            return None
        y, exp_y = self._exp
        deviatoric = y - np.trace(y) / 3 * np.eye(3)  # imaginary parts of its eigenvalues: Y's
        if np.linalg.norm(deviatoric) >= LOG_BRANCH_LIMIT:
            return None
        scale = float(np.vdot(exp_y, f) / np.vdot(f, f))  # c
        if (
            not scale > 0
            or np.abs(scale * f - exp_y).max() > LOG_ROUNDTRIP_TOLERANCE * np.abs(exp_y).max()
        ):
            return None
        return y - np.log(scale) * np.eye(3)

    def expm_frechet(
        self, a: np.ndarray, e: np.ndarray, method: str | None = None, compute_expm: bool = True,
        check_finite: bool = True,
    ) -> Any:  # fmt: skip
        """Fréchet derivative of expm at A (3, 3) in direction E (3, 3); for a unit E without
        ``compute_expm`` taken from the nine computed together at A."""
        unit = np.flatnonzero(e)
        if (
            compute_expm
            or np.iscomplexobj(a)
            or np.iscomplexobj(e)
            or np.shape(a) != (3, 3)
            or len(unit) != 1
            or np.asarray(e).flat[unit[0]] != 1.0
        ):
            return expm_frechet(
                a, e, method=method, compute_expm=compute_expm, check_finite=check_finite
            )
        a = np.asarray(a, dtype=float)
        key = a.tobytes()
        if self._frechet is None or self._frechet[0] != key:
            self._frechet = (key, frechet_derivatives(a))
        return self._frechet[1][unit[0]].copy()


def frechet_derivatives(a: np.ndarray) -> np.ndarray:
    """(3, 3) A -> (9, 3, 3): the Fréchet derivative of expm at A in each unit direction
    E_k (k = 3 * row + column), as the upper-right blocks of expm([[A, E_k], [0, A]])."""
    k = np.arange(9)
    blocks = np.zeros((9, 6, 6))
    blocks[:, :3, :3] = a
    blocks[:, 3:, 3:] = a
    blocks[k, k // 3, 3 + k % 3] = 1.0
    return expm(blocks)[:, :3, 3:]


class CachedFrechetCellFilter(FrechetCellFilter):
    """``ase.filters.FrechetCellFilter`` (same arguments) whose matrix functions reuse work
    (module docstring) and which remembers its generalised forces, (n_atoms + 3, 3): atom rows
    in eV/Å, cell rows in eV per unit log-strain divided by ``exp_cell_factor``, as ASE's. They
    are kept for the last positions, cell, model results and filter settings (pressure, mask,
    constraints on the cell, reference cell)."""

    _cache: tuple[bytes, np.ndarray] | None = None

    def __init__(self, atoms: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(atoms, *args, **kwargs)
        functions = _MatrixFunctions()
        for owner in (self, self._utility):
            owner.logm, owner.expm = functions.logm, functions.expm
            owner.expm_frechet = functions.expm_frechet

    def get_forces(self, *args: Any, **kwargs: Any) -> np.ndarray:
        """Generalised forces on the atoms and the cell, (n_atoms + 3, 3), as ASE's."""
        if args or kwargs:  # passed on to the atoms' calculator: not cached
            return super().get_forces(*args, **kwargs)
        atoms, utility = self.atoms, self._utility
        settings = (
            utility.scalar_pressure,
            utility.hydrostatic_strain,
            utility.constant_volume,
            self.exp_cell_factor,
        )
        key = b"".join(
            np.ascontiguousarray(x, dtype=float).tobytes()
            for x in (
                atoms.positions,
                atoms.cell.array,
                atoms.get_forces(),
                atoms.get_stress(),
                utility.mask3x3,
                utility.orig_cell,
                settings,
            )
        )
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, super().get_forces(*args, **kwargs))
        return self._cache[1].copy()
