"""chgnet's ``EquationOfState``: relax a structure, relax strained copies at fixed cell, fit
pymatgen's Birch-Murnaghan equation of state. The relaxations are ``fastchgnet.md.relax``'s
(the strained copies advance together, one model call per step).

Units: volume Å^3, energy eV (total), bulk modulus eV/Å^3 or GPa, compressibility its inverse.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms, units
from pymatgen.analysis.eos import BirchMurnaghan
from pymatgen.io.ase import AseAtomsAdaptor

from fastchgnet.compat.dynamics import CHGNetCalculator
from fastchgnet.compat.model import CHGNet, as_compat_model, determine_device, unsupported
from fastchgnet.md.relax import OPTIMIZERS, relax

#: compressibility unit -> factor on 1 / (bulk modulus in GPa)
_PER_GPA = {"GPa^-1": 1.0, "Pa^-1": 1e-9, "m^2/N": 1e-9}


def _optimizer_name(optimizer_class: Any) -> str:
    """chgnet's ``optimizer_class`` (a name or an ASE class) as ``md.relax``'s name."""
    for name, cls in OPTIMIZERS.items():
        if optimizer_class in (name, cls):
            return name
    raise unsupported(f"EquationOfState(optimizer_class={optimizer_class!r})", "use FIRE or BFGS")


class EquationOfState:
    """Bulk modulus of a crystal from a Birch-Murnaghan fit, as chgnet's ``EquationOfState``:
    ``fit(structure)``, then ``get_bulk_modulus(unit)`` and ``get_compressibility(unit)``."""

    def __init__(
        self,
        model: CHGNet | CHGNetCalculator | None = None,
        optimizer_class: Any = "FIRE",
        use_device: str | None = None,
        stress_weight: float = units.GPa,
        on_isolated_atoms: str = "error",
    ) -> None:
        if on_isolated_atoms != "error":
            raise unsupported(f"on_isolated_atoms={on_isolated_atoms!r}", "use 'error'")
        self.optimizer = _optimizer_name(optimizer_class)
        device = determine_device(use_device)
        if isinstance(model, CHGNetCalculator):
            model = model.model
        self.model = as_compat_model(model, device)
        self.stress_weight = stress_weight  # energies only: kept for chgnet's signature
        self.fitted = False

    def fit(
        self,
        atoms: Any,
        *,
        n_points: int = 11,
        fmax: float | None = 0.1,
        steps: int | None = 500,
        verbose: bool | None = False,
        **kwargs: Any,
    ) -> None:
        """Relax the primitive cell of ``atoms`` (pymatgen Structure or ASE Atoms; cell too),
        strain it by ``n_points`` linear strains in [-0.1, 0.1], relax each at fixed cell
        and fit energies (eV) against volumes (Å^3)."""
        if kwargs:
            raise unsupported(f"EquationOfState.fit(..., {sorted(kwargs)})", "leave them out")
        if n_points < 4:
            raise ValueError(f"n_points={n_points}: the fit has 4 parameters, so needs >= 4")
        structure = AseAtomsAdaptor.get_structure(atoms) if isinstance(atoms, Atoms) else atoms
        settings = {
            "fmax": 0.1 if fmax is None else fmax,
            "steps": 500 if steps is None else steps,
            "optimizer": self.optimizer,
            "progress": bool(verbose),
            "compiled": False,
        }
        relaxed = relax(structure.get_primitive_structure(), self.model, **settings)
        strained = []
        for strain in np.linspace(-0.1, 0.1, n_points):
            copy = relaxed.structure.copy()
            copy.apply_strain([strain, strain, strain])
            strained.append(copy)
        results = relax(strained, self.model, relax_cell=False, **settings)
        self.volumes = [result.atoms.get_volume() for result in results]
        self.energies = [result.energy for result in results]
        self.bm = BirchMurnaghan(volumes=self.volumes, energies=self.energies)
        self.bm.fit()
        self.fitted = True

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise ValueError("Equation of state needs to be fitted first through self.fit()")

    def get_bulk_modulus(self, unit: str = "eV/A^3") -> float:
        """The fitted bulk modulus in ``unit``: "eV/A^3" (default) or "GPa" (pymatgen's
        ``FloatWithUnit``, a float, as chgnet's)."""
        self._check_fitted()
        if unit == "eV/A^3":
            return self.bm.b0
        if unit == "GPa":
            return self.bm.b0_GPa
        raise ValueError(f"unit={unit!r}: use 'eV/A^3' or 'GPa'")

    def get_compressibility(self, unit: str = "A^3/eV") -> float:
        """1 / bulk modulus in ``unit``: "A^3/eV" (default), "GPa^-1", "Pa^-1" or "m^2/N"."""
        self._check_fitted()
        if unit == "A^3/eV":
            return 1 / self.bm.b0
        if unit in _PER_GPA:
            return _PER_GPA[unit] / self.bm.b0_GPa
        raise ValueError(f"unit={unit!r}: use 'A^3/eV', 'GPa^-1', 'Pa^-1' or 'm^2/N'")
