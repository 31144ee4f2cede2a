"""Compiled single-structure prediction: build the graph, pad to a rounded capacity, run the
captured model, return numpy as the reference's ``predict_structure`` does.

Capacities are rounded up (bonds and angles to multiples of ``round_to``) so a structure whose
bond count drifts a little (molecular dynamics, relaxation) keeps its compiled shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastchgnet.compile.capture import CapturedModel
from fastchgnet.data.buckets import Capacity
from fastchgnet.data.graph import CrystalGraph
from fastchgnet.data.padding import collate_padded
from fastchgnet.md.predict import graphs_for, split_prediction
from fastchgnet.numerics import flush_denormals


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` >= ``value``."""
    return -(-value // multiple) * multiple


def structure_capacity(graph: CrystalGraph, round_to: int = 32) -> Capacity:
    """Capacity for one structure: its atoms + 1 padding atom, bonds + 1 and angles rounded up."""
    return Capacity(
        structures=1,
        atoms=graph.n_atoms + 1,
        bonds=round_up(graph.n_bonds + 1, round_to),
        angles=round_up(graph.n_angles, round_to),
    )


class CompiledStructurePredictor:
    """``predict_structure(structure) -> {"e", "f", "s", "m"}`` with a captured model.

    e () eV/atom, f (n, 3) eV/Å, s (3, 3) GPa, m (n,) μB, as ``FastCHGNet.predict_structure``.
    """

    def __init__(self, captured: CapturedModel, round_to: int = 32):
        self.captured = captured
        self.round_to = round_to

    def predict_structure(self, structure: Any) -> dict[str, np.ndarray]:
        """Predict one pymatgen Structure or ASE Atoms."""
        model = self.captured.model
        parameter = next(model.parameters())
        (graph,) = graphs_for(model, [structure])
        batch, _ = collate_padded(
            [graph], structure_capacity(graph, self.round_to), None, parameter.dtype
        )
        batch = batch.to(parameter.device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), flush_denormals():
                prediction = self.captured.predict(batch)
        finally:
            model.train(was_training)
        return split_prediction(prediction, batch.n_atoms)[0]
