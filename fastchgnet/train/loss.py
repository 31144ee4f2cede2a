"""Training loss: Huber or MSE per target, weighted by prefactors, missing labels masked.

Each target's loss is the mean over its labelled entries: energy per structure (eV/atom), forces
per Cartesian component (eV/Å), stress per tensor component (GPa), magnetic moments per atom
(μB). A target with no labelled entry in the batch contributes exactly zero (and no gradient).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fastchgnet.data.labels import LabelBatch

TARGETS = ("energy", "forces", "stress", "magmoms")


@dataclass(frozen=True)
class LossConfig:
    """Loss settings: ``kind`` "huber" (with ``huber_delta`` in each target's unit) or "mse";
    one prefactor per target (the paper's e/f/s/m = 2, 1.5, 0.1, 0.1); 0 drops a target."""

    kind: Literal["huber", "mse"] = "huber"
    huber_delta: float = 0.1
    energy: float = 2.0
    forces: float = 1.5
    stress: float = 0.1
    magmoms: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in ("huber", "mse"):
            raise ValueError(f"loss kind {self.kind!r}: use 'huber' or 'mse'")
        if self.huber_delta <= 0:
            raise ValueError(f"huber_delta={self.huber_delta} must be positive")
        for name in TARGETS:
            if getattr(self, name) < 0:
                raise ValueError(f"loss prefactor {name}={getattr(self, name)} is negative")

    def weights(self) -> dict[str, float]:
        """Target name -> prefactor."""
        return {name: float(getattr(self, name)) for name in TARGETS}


def masked_pointwise(
    prediction: Tensor, target: Tensor, mask: Tensor, config: LossConfig
) -> Tensor:
    """Mean Huber/MSE over the entries selected by ``mask`` (leading dims of prediction).

    ``prediction`` and ``target`` have the same shape, ``mask`` (n,) selects rows; every
    component of a selected row counts. Returns a 0-d tensor, 0 when nothing is selected.
    """
    selected_prediction = prediction[mask]
    selected_target = target[mask]
    if selected_prediction.numel() == 0:
        return prediction.sum() * 0.0  # zero that keeps the graph (and dtype/device)
    if config.kind == "mse":
        return torch.nn.functional.mse_loss(selected_prediction, selected_target)
    return torch.nn.functional.huber_loss(
        selected_prediction, selected_target, delta=config.huber_delta
    )


def loss_terms(prediction: object, labels: LabelBatch, config: LossConfig) -> dict[str, Tensor]:
    """Unweighted per-target losses (0-d tensors) for every target with a nonzero prefactor.

    Args:
        prediction: a ``fastchgnet.model.Prediction`` (energy (S,) eV/atom, forces (N, 3),
            stress (S, 3, 3) GPa, magmoms (N,) μB); a needed field that is None is an error.
        labels: the batch's ``LabelBatch`` (same units, with masks).
    """
    pairs = {
        "energy": (prediction.energy, labels.energy, labels.energy_mask),
        "forces": (prediction.forces, labels.forces, labels.forces_mask),
        "stress": (prediction.stress, labels.stress, labels.stress_mask),
        "magmoms": (prediction.magmoms, labels.magmoms, labels.magmoms_mask),
    }
    terms = {}
    for name, weight in config.weights().items():
        if weight == 0:
            continue
        predicted, target, mask = pairs[name]
        if predicted is None:
            raise ValueError(f"the loss needs {name} but the model did not predict it")
        terms[name] = masked_pointwise(predicted, target.to(predicted.dtype), mask, config)
    return terms


def total_loss(terms: dict[str, Tensor], config: LossConfig) -> Tensor:
    """Prefactor-weighted sum of ``loss_terms``' output (0-d tensor)."""
    weights = config.weights()
    values = [weights[name] * value for name, value in terms.items()]
    if not values:
        raise ValueError("every loss prefactor is zero: nothing to train")
    return torch.stack(values).sum()
