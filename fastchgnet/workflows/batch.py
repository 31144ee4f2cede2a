"""Evaluate many structures in few model calls (ASE results per structure), and the ASE
calculator that the one-structure-at-a-time workflows (matcalc, D3) take."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastchgnet.md.calculator import Calculator, evaluate_graphs
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


def as_calculator(model_or_calculator: Any) -> Any:
    """An ASE calculator: the one given, or ours over the given model (FastCHGNet, compat
    CHGNet or Potential) with stress on every call (matcalc's workflows need it)."""
    if hasattr(model_or_calculator, "get_property"):
        return model_or_calculator
    return Calculator(model_or_calculator, always_stress=True)
