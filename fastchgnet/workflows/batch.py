"""Evaluate many structures in few model calls (ASE results per structure), and the ASE
calculator that the one-structure-at-a-time workflows (matcalc, D3) take, able to answer
from structures evaluated ahead in batches."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ase import units
from ase.calculators.calculator import all_changes

from fastchgnet.data.graph import check_ordered, structure_name
from fastchgnet.data.periodic import check_periodic
from fastchgnet.md.calculator import Calculator, as_atoms, evaluate_graphs
from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.model.potential import (
    Potential,
    as_potential,
    graphs_for,
    is_structure,
    not_a_structure,
)
from fastchgnet.model.reference import is_reference_model

#: structures -> ASE results (``energy`` eV, ``forces`` (n, 3) eV/Å, ``stress`` (6,) eV/Å^3)
Evaluator = Callable[[Sequence[Any]], list[dict[str, Any]]]


def batched_evaluator(model: Potential | Any, batch_size: int = 32) -> Evaluator:
    """An ``Evaluator`` calling ``model`` (a Potential or a FastCHGNet) on ``batch_size``
    structures at a time."""
    model = as_potential(model)

    def evaluate(structures: Sequence[Any]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for start in range(0, len(structures), batch_size):
            graphs = graphs_for(model.config, structures[start : start + batch_size], start)
            results += evaluate_graphs(model, graphs, stress=True)
        return results

    return evaluate


class PrefetchCalculator(Calculator):
    """Our ASE calculator that also answers from results evaluated ahead, in batched model
    calls, for structures a one-structure-at-a-time workflow (matcalc) is about to ask for.

    ``prefetch(structures)`` evaluates them ``batch_size`` at a time (energy, forces, stress,
    magmoms, site energies) and keeps the results keyed by atomic numbers, cell and positions
    (rounded to 1e-6 Å); ``calculate`` answers a matching request from there (``hits``) and
    computes anything else itself (``misses``), so results never depend on the prefetch.
    """

    def __init__(self, model: Any, batch_size: int = 32, **options: Any) -> None:
        options.setdefault("always_stress", True)
        super().__init__(model, **options)
        self.evaluate = batched_evaluator(self.potential, batch_size)
        self.prefetched: dict[bytes, dict[str, Any]] = {}
        self.hits = self.misses = 0

    def prefetch(self, structures: Sequence[Any]) -> None:
        """Evaluate ``structures`` (pymatgen or ASE) in batches and keep their results."""
        atoms = [as_atoms(s) for s in structures]
        for one, results in zip(atoms, self.evaluate(atoms), strict=True):
            self.prefetched[_key(one)] = results

    def calculate(
        self,
        atoms: Any = None,
        properties: Sequence[str] = ("energy", "forces"),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        """Answer from the prefetched results when ``atoms`` is one of them, else compute."""
        results = self.prefetched.get(_key(atoms)) if atoms is not None else None
        if results is not None and all(p in results for p in properties):
            self.hits += 1
            self.store(atoms, results)
            return
        self.misses += 1
        super().calculate(atoms, properties, system_changes)


def _key(atoms: Any) -> bytes:
    """Atomic numbers, cell and positions (rounded to 1e-6 Å; -0 as 0) as one lookup key."""
    rounded = [np.round(a, 6) + 0.0 for a in (atoms.cell.array, atoms.positions)]
    return b"|".join([np.asarray(atoms.numbers).tobytes(), *(a.tobytes() for a in rounded)])


def check_structure(structure: Any) -> None:
    """A one-line TypeError naming the type unless ``structure`` is one pymatgen Structure or
    ASE Atoms (a workflow's input; a path or a dict says how to make one), and the graph
    builder's one-line StructureError when it is disordered or not periodic on all three
    axes (a workflow strains or repeats its cell)."""
    if not is_structure(structure):
        raise not_a_structure(structure)
    name = structure_name(structure)
    check_ordered(structure, name)
    check_periodic(structure, name)


def as_calculator(model_or_calculator: Any) -> Any:
    """An ASE calculator: the one given, or a ``PrefetchCalculator`` over the given model
    (FastCHGNet, compat CHGNet or Potential) with stress on every call (matcalc needs it)."""
    if hasattr(model_or_calculator, "get_property"):
        return model_or_calculator
    check_model(model_or_calculator)
    return PrefetchCalculator(model_or_calculator)


def check_model(model: Any) -> None:
    """A one-line TypeError saying what a workflow takes unless ``model`` is a FastCHGNet
    (compat CHGNet included) or a ``Potential`` (an ASE calculator is taken before this)."""
    if isinstance(model, FastCHGNet | Potential):
        return
    if is_reference_model(model):  # the reference package's model
        hint = (
            "; for the reference chgnet's model pass chgnet's CHGNetCalculator(model), or use "
            "FastCHGNet.from_reference()"
        )
    else:
        hint = " (FastCHGNet.from_reference(), FastCHGNet.load(path))"
    raise TypeError(
        "model_or_calculator: expected a FastCHGNet, a Potential or an ASE calculator, got "
        f"{type(model).__name__}{hint}"
    )


def check_fit_precision(calculator: Any) -> None:
    """A one-line ValueError when the model behind ``calculator`` (ours: a ``Calculator``'s
    potential) runs below float32: bf16 energies jump 60-100 meV per 0.1 % strain (MgO: bulk
    modulus 202 GPa against 134 in float32), so fits over small strains and displacements
    (EOS, elastic tensor, phonons) mean nothing. Another library's calculator passes."""
    module = getattr(getattr(calculator, "potential", None), "model", None)
    if not isinstance(module, torch.nn.Module):
        return
    precision = getattr(module, "precision", "float32")
    dtype = next(module.parameters()).dtype
    if precision != "float32" or dtype not in (torch.float32, torch.float64):
        shown = precision if precision != "float32" else str(dtype).removeprefix("torch.")
        raise ValueError(
            f"the model runs in {shown}: its energies are too coarse for fits over small "
            "strains and displacements (bf16 jumps 60-100 meV per 0.1 % strain); use "
            "model.set_precision('float32') (and float32 or float64 weights)"
        )


#: GPa: the largest |stress component| of an input that ``warn_far_from_equilibrium`` lets
#: pass. Diamond Si (the model's a = 5.461 Å, 0.01 GPa): 1.7 GPa at a = 5.43 and 3.8 at 5.40
#: (elastic B_vrh 126 and 98 GPa against 71), 19 GPa at 5.20 (B_vrh 171.5); inputs relaxed
#: by the model (Cu, Mg, Si, NaCl, LiMnO2, Li9Co7O16, a triclinic Li2O2) 0.03-0.15 GPa
MAX_RESIDUAL_STRESS = 1.0
#: eV/Å: the largest force on an atom that ``warn_far_from_equilibrium`` lets pass. One Si of
#: relaxed primitive Si moved 0.005 Å (0.053 eV/Å) split its Γ optical modes (13.34 THz) into
#: 12.2-13.6 THz, 0.01 Å (0.089 eV/Å) into 10.7-13.6; relaxed inputs measured below 0.014
MAX_RESIDUAL_FORCE = 0.05


def warn_far_from_equilibrium(structure: Any, calculator: Any, workflow: str) -> None:
    """A one-line UserWarning naming ``structure``, its residual stress (largest |component|,
    GPa) and its largest force (eV/Å) when either is above ``MAX_RESIDUAL_STRESS`` or
    ``MAX_RESIDUAL_FORCE``: ``workflow``'s numbers (clamped-ion, about this geometry) are then
    those of a stressed or distorted structure, not of its equilibrium. ``calculator`` (an
    ASE one, prefetched or not) evaluates it."""
    atoms = as_atoms(structure)
    atoms.calc = calculator
    stress = float(np.abs(atoms.get_stress()).max() / units.GPa)
    force = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    if stress > MAX_RESIDUAL_STRESS or force > MAX_RESIDUAL_FORCE:
        warnings.warn(
            f"{structure_name(structure)}: residual stress {stress:.2f} GPa, largest force "
            f"{force:.3f} eV/Å (above {MAX_RESIDUAL_STRESS} GPa or {MAX_RESIDUAL_FORCE} eV/Å): "
            f"far from equilibrium, so the {workflow} is not the relaxed structure's; relax it "
            "first (fastchgnet.md.relax(structure, model, fmax=0.02).atoms)",
            UserWarning,
            stacklevel=3,
        )
