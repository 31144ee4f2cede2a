"""Evaluate many structures in few model calls: ASE results per structure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastchgnet.md.calculator import as_atoms, evaluate_graphs
from fastchgnet.model.potential import Potential, as_potential, graphs_for

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


def calculator_evaluator(calculator: Any) -> Evaluator:
    """An ``Evaluator`` asking an ASE calculator one structure at a time (e.g. the reference
    chgnet's ``CHGNetCalculator``, to run the same workflow side by side)."""

    def evaluate(structures: Sequence[Any]) -> list[dict[str, Any]]:
        results = []
        for structure in structures:
            atoms = as_atoms(structure)
            atoms.calc = calculator
            results.append(
                {
                    "energy": float(atoms.get_potential_energy()),
                    "forces": atoms.get_forces(),
                    "stress": atoms.get_stress(),
                }
            )
        return results

    return evaluate
