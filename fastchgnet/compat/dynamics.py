"""The reference's ``chgnet.model.dynamics`` names over our calculator, relaxation and MD.

``CHGNetCalculator`` is our ``fastchgnet.md.Calculator`` (ASE units; ``energies`` are site
energies in eV; ``crystal_fea`` in the results as the reference). ``StructOptimizer.relax``
returns ``{"final_structure", "trajectory"}`` with a ``TrajectoryObserver`` holding the
reference's fields; ``MolecularDynamics`` builds the same ASE integrators as the reference.
Every public name of ``chgnet.model.dynamics`` imports from here: ``MolecularDynamics``,
``CrystalFeasObserver`` and ``EquationOfState`` live in their own modules (which import this
one) and are looked up on first use.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
import warnings
from typing import Any

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator as AseCalculator
from ase.calculators.calculator import all_changes, all_properties
from ase.filters import Filter
from ase.optimize import BFGS, FIRE, LBFGS, BFGSLineSearch, LBFGSLineSearch, MDMin
from ase.stress import voigt_6_to_full_3x3_stress
from pymatgen.io.ase import AseAtomsAdaptor

from fastchgnet.compat.model import (
    PRED_TASKS,
    CHGNet,
    as_compat_model,
    determine_device,
    unsupported,
)
from fastchgnet.md.calculator import Calculator, as_atoms, evaluate_graphs
from fastchgnet.md.cell_filter import CachedFrechetCellFilter

#: chgnet's optimizer names that StructOptimizer does not take (ASE's SciPy wrappers)
NOT_OFFERED = ("SciPyFminCG", "SciPyFminBFGS")
#: chgnet.model.dynamics names defined in other compat modules (they import this one)
ELSEWHERE = {
    "CrystalFeasObserver": "fastchgnet.compat.molecular_dynamics",
    "MolecularDynamics": "fastchgnet.compat.molecular_dynamics",
    "EquationOfState": "fastchgnet.compat.eos",
}

#: the calculator's results: the model's numpy outputs, in the model's float type
RESULT_KEYS = ("energy", "free_energy", "forces", "stress", "magmoms", "energies", "crystal_fea")

OPTIMIZERS = {
    "FIRE": FIRE,
    "BFGS": BFGS,
    "LBFGS": LBFGS,
    "LBFGSLineSearch": LBFGSLineSearch,
    "MDMin": MDMin,
    "BFGSLineSearch": BFGSLineSearch,
}


class CHGNetCalculator(Calculator):
    """ASE calculator with the reference's signature (energy eV, forces eV/Å, stress in
    eV/Å^3 = GPa x ``stress_weight``, magmoms μB, ``energies`` site energies eV).

    As the reference's, the results hold ``free_energy`` (= ``energy``) but the implemented
    properties do not name it: ``get_potential_energy(force_consistent=True)`` raises ASE's
    PropertyNotImplementedError, which ASE's optimizers and cell filters (FrechetCellFilter,
    ExpCellFilter, UnitCellFilter) catch, taking the energy instead (the same number), and
    trajectory files hold no ``free_energy``, as the reference's.
    """

    implemented_properties = ("energy", "forces", "stress", "magmoms", "energies")

    def __init__(
        self,
        model: CHGNet | None = None,
        *,
        use_device: str | None = None,
        check_cuda_mem: bool = False,
        stress_weight: float = units.GPa,
        on_isolated_atoms: str = "warn",
        return_site_energies: bool = False,
        **kwargs: Any,
    ) -> None:
        device = determine_device(use_device, check_cuda_mem)
        model = as_compat_model(model, device)  # None: pretrained; a chgnet CHGNet: converted
        if hasattr(model, "graph_converter"):
            model.graph_converter.set_isolated_atom_response(on_isolated_atoms)
        allow_isolated = on_isolated_atoms != "error"  # "warn" predicts, as the reference
        super().__init__(model, features=True, allow_isolated=allow_isolated, **kwargs)
        # the reference's ``calculator.model`` is the CHGNet (``self.potential`` wraps it)
        self.model = self.chgnet = model
        self.on_isolated_atoms = on_isolated_atoms
        self.device, self.stress_weight = device, stress_weight
        self.return_site_energies = return_site_energies

    def graph(self, atoms: Any) -> Any:
        """The graph of ``atoms``; with on_isolated_atoms="warn", a warning names atoms
        without neighbours (predicted unbonded)."""
        graph = super().graph(atoms)
        if self.on_isolated_atoms == "warn":
            degree = np.bincount(graph.bond_atoms.ravel(), minlength=graph.n_atoms)
            if (degree == 0).any():
                isolated = np.flatnonzero(degree == 0)[:10].tolist()
                warnings.warn(f"{graph.name}: isolated atom(s) {isolated}", stacklevel=2)
        return graph

    @classmethod
    def from_file(cls, path: str, use_device: str | None = None, **kwargs: Any) -> CHGNetCalculator:
        """A calculator over ``CHGNet.from_file(path)``."""
        return cls(model=CHGNet.from_file(path), use_device=use_device, **kwargs)

    @property
    def version(self) -> str | None:
        return getattr(self.chgnet, "version", None)

    @property
    def n_params(self) -> int:
        return self.chgnet.n_params

    def calculate(
        self,
        atoms: Any = None,
        properties: Any = None,
        system_changes: Any = None,
        task: str = "efsm",
    ) -> None:
        """What ``task`` asks (one of ``PRED_TASKS``: e energy, f forces, s stress, m magmoms;
        ASE's own calls take "efsm"), as the reference's: forces and stress are computed only
        when asked ("e" and "em": the forward pass alone). The results hold ``energy`` and
        ``free_energy`` (eV), ``crystal_fea``, what the task names of ``forces``, ``stress``
        ((3, 3), GPa x ``stress_weight``) and ``magmoms``, and with ``return_site_energies``
        ``energies``. A call for the atoms the results are of keeps what it does not
        recompute, as the reference's; one for other atoms drops them (the reference kept
        them, stale)."""
        if task not in PRED_TASKS:
            raise ValueError(f"Invalid task={task!r}. Must be one of {PRED_TASKS}.")
        same_atoms = atoms is None or (self.atoms is not None and not self.check_state(atoms))
        kept = self.results if same_atoms else {}
        properties, system_changes = properties or all_properties, system_changes or all_changes
        AseCalculator.calculate(self, atoms, properties, system_changes)  # copies the atoms
        self.stress_next = False  # the task decides here
        (results,) = evaluate_graphs(
            self.potential,
            [self.graph(self.atoms)],
            stress="s" in task,
            forces="f" in task,
            features=self.features,
        )
        if "stress" in results:  # the reference's (3, 3) tensor (``get_stress``: ASE's Voigt 6)
            stress = voigt_6_to_full_3x3_stress(results["stress"])
            if self.stress_weight != units.GPa:
                stress = stress / units.GPa * self.stress_weight
            results["stress"] = stress
        if "m" not in task:
            results.pop("magmoms", None)
        if not self.return_site_energies:
            results.pop("energies", None)
        # the reference's results are its model's numpy outputs: float32 (float64 for a double
        # model), crystal_fea included, the energies numpy scalars (a script calls
        # ``energies[-1].item()``)
        double = next(self.chgnet.parameters()).dtype == torch.float64
        dtype = np.float64 if double else np.float32
        for key in RESULT_KEYS:
            if key in results:
                results[key] = np.asarray(results[key], dtype=dtype)[()]
        self.results = {**kept, **results}


def _is_filter(cls: Any) -> bool:
    """Whether ``cls`` is an ASE filter class (``ase.filters`` also holds other names)."""
    return isinstance(cls, type) and issubclass(cls, Filter)


class TrajectoryObserver:
    """Records energy (eV), forces, stress (ASE, eV/Å^3), magmoms, positions and cell of
    ``atoms`` at each call, as the reference's observer; ``save`` writes its pickle."""

    def __init__(self, atoms: Atoms) -> None:
        self.atoms = atoms
        self.energies: list[float] = []
        self.forces: list[np.ndarray] = []
        self.stresses: list[np.ndarray] = []
        self.magmoms: list[np.ndarray] = []
        self.atom_positions: list[np.ndarray] = []
        self.cells: list[np.ndarray] = []

    def __call__(self) -> None:
        self.energies.append(self.compute_energy())
        self.forces.append(self.atoms.get_forces())
        self.stresses.append(self.atoms.get_stress())
        self.magmoms.append(self.atoms.get_magnetic_moments())
        self.atom_positions.append(self.atoms.get_positions())
        self.cells.append(self.atoms.get_cell()[:])

    def __len__(self) -> int:
        return len(self.energies)

    def compute_energy(self) -> float:
        """The potential energy now, eV."""
        return self.atoms.get_potential_energy()

    def save(self, filename: str) -> None:
        """Pickle the recorded fields under the reference's keys (our own file: trusted)."""
        data = {
            "energy": self.energies,
            "forces": self.forces,
            "stresses": self.stresses,
            "magmoms": self.magmoms,
            "atom_positions": self.atom_positions,
            "cell": self.cells,
            "atomic_number": self.atoms.get_atomic_numbers(),
        }
        with open(filename, "wb") as handle:
            pickle.dump(data, handle)


class StructOptimizer:
    """Relaxation with an ASE optimizer over a cell filter, as the reference. For many
    structures at once, ``fastchgnet.md.relax`` advances them together in one model call."""

    def __init__(
        self,
        model: CHGNet | CHGNetCalculator | None = None,
        optimizer_class: Any = "FIRE",
        use_device: str | None = None,
        stress_weight: float = units.GPa,
        on_isolated_atoms: str = "warn",
    ) -> None:
        if isinstance(optimizer_class, str):
            if optimizer_class in NOT_OFFERED:
                raise ValueError(
                    f"optimizer_class={optimizer_class!r} (chgnet's) is not supported in "
                    f"fastchgnet.compat; use one of {list(OPTIMIZERS)}"
                )
            if optimizer_class not in OPTIMIZERS:
                raise ValueError(
                    f"Optimizer {optimizer_class!r} not found. Select from {list(OPTIMIZERS)}"
                )
            optimizer_class = OPTIMIZERS[optimizer_class]
        self.optimizer_class = optimizer_class
        if isinstance(model, CHGNetCalculator):
            self.calculator = model
        else:
            self.calculator = CHGNetCalculator(
                model,
                use_device=use_device,
                stress_weight=stress_weight,
                on_isolated_atoms=on_isolated_atoms,
            )

    @property
    def version(self) -> str | None:
        return self.calculator.version

    @property
    def n_params(self) -> int:
        return self.calculator.n_params

    def relax(
        self,
        atoms: Any,
        *,
        fmax: float = 0.1,
        steps: int = 500,
        relax_cell: bool = True,
        ase_filter: Any = "FrechetCellFilter",
        save_path: str | None = None,
        loginterval: int = 1,
        crystal_feas_save_path: str | None = None,
        verbose: bool = True,
        assign_magmoms: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Relax until every force is below ``fmax`` (eV/Å). Returns ``final_structure``
        (pymatgen, with ``magmom`` site property) and ``trajectory`` (TrajectoryObserver)."""
        from ase import filters

        if crystal_feas_save_path is not None:
            raise unsupported(
                "crystal_feas_save_path", "read results['crystal_fea'] of the calculator"
            )
        if isinstance(ase_filter, str):
            names = sorted(name for name, cls in vars(filters).items() if _is_filter(cls))
            if ase_filter not in names:
                raise ValueError(f"Invalid ase_filter={ase_filter!r}, must be one of {names}")
            ase_filter = getattr(filters, ase_filter)
        if ase_filter is filters.FrechetCellFilter:  # the same results, its 3x3 maths reused
            ase_filter = CachedFrechetCellFilter
        atoms = as_atoms(atoms) if not isinstance(atoms, Atoms) else atoms
        atoms.calc = self.calculator
        stream = sys.stdout if verbose else io.StringIO()
        with contextlib.redirect_stdout(stream):
            observer = TrajectoryObserver(atoms)
            target = ase_filter(atoms) if relax_cell else atoms
            optimizer = self.optimizer_class(target, **kwargs)
            optimizer.attach(observer, interval=loginterval)
            optimizer.run(fmax=fmax, steps=steps)
            observer()
        if save_path is not None:
            observer.save(save_path)
        if isinstance(target, Filter):
            atoms = target.atoms
        structure = AseAtomsAdaptor.get_structure(atoms)
        if assign_magmoms:
            for key in list(structure.site_properties):
                structure.remove_site_property(key)
            magmoms = [float(m) for m in atoms.get_magnetic_moments()]
            structure.add_site_property("magmom", magmoms)
        return {"final_structure": structure, "trajectory": observer}


def __getattr__(name: str) -> Any:
    """``ELSEWHERE``'s names, imported on first use (a module-level import would be a cycle)."""
    if name in ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(ELSEWHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: with ``ELSEWHERE``'s names (module ``__getattr__``), chgnet.model.dynamics' public names
__all__ = [
    "OPTIMIZERS",
    "CHGNet",
    "CHGNetCalculator",
    "StructOptimizer",
    "TrajectoryObserver",
    "all_changes",
    "all_properties",
    "determine_device",
    *ELSEWHERE,
]
