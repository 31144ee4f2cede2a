"""The two model calls that get captured: prediction, and prediction plus the training loss.

The loss here is ``fastchgnet.train.loss`` (Huber/MSE per target, prefactors, masked mean)
written with fixed shapes: instead of selecting labelled rows (``x[mask]``, a data-dependent
shape that a captured graph cannot hold), every row's pointwise loss is kept and masked rows
are zeroed; the mean divides by the number of labelled entries. Same value and gradient
(tested against ``train.loss.total_loss``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastchgnet.compile.trace import Program
from fastchgnet.data.batch import GraphBatch
from fastchgnet.data.labels import LabelBatch
from fastchgnet.train.loss import LossConfig

#: Output order of ``predict_program``.
PREDICTION_OUTPUTS = ("energy", "total_energy", "forces", "stress", "magmoms")


def masked_mean_loss(
    prediction: Tensor, target: Tensor, mask: Tensor, config: LossConfig
) -> Tensor:
    """Mean Huber/MSE over the rows where ``mask`` (n,) is True, every component counted.

    prediction, target: (n, ...) same shape. Returns a 0-d tensor; 0 when no row is labelled.
    """
    if config.kind == "mse":
        pointwise = (prediction - target).square()
    else:
        pointwise = nn.functional.huber_loss(
            prediction, target, reduction="none", delta=config.huber_delta
        )
    row_mask = mask.reshape(mask.shape + (1,) * (prediction.dim() - 1)).expand_as(pointwise)
    total = torch.where(row_mask, pointwise, torch.zeros_like(pointwise)).sum()
    count = row_mask.sum().to(pointwise.dtype)
    return total / count.clamp(min=1)


def fixed_shape_loss(
    energy: Tensor,
    forces: Tensor | None,
    stress: Tensor | None,
    magmoms: Tensor | None,
    labels: LabelBatch,
    config: LossConfig,
) -> Tensor:
    """Prefactor-weighted sum of the per-target masked losses (0-d tensor).

    energy (S,) eV/atom, forces (N, 3) eV/Å, stress (S, 3, 3) GPa, magmoms (N,) μB.
    """
    pairs = {
        "energy": (energy, labels.energy, labels.energy_mask),
        "forces": (forces, labels.forces, labels.forces_mask),
        "stress": (stress, labels.stress, labels.stress_mask),
        "magmoms": (magmoms, labels.magmoms, labels.magmoms_mask),
    }
    total = energy.new_zeros(())
    for name, weight in config.weights().items():
        if weight == 0:
            continue
        predicted, target, mask = pairs[name]
        if predicted is None:
            raise ValueError(f"the loss needs {name} but the model did not predict it")
        total = total + weight * masked_mean_loss(
            predicted, target.to(predicted.dtype), mask, config
        )
    return total


def predict_program(compute_forces: bool, compute_stress: bool) -> Program:
    """model(batch) -> (energy, total_energy, forces, stress, magmoms); see ``Prediction``."""

    def program(model: nn.Module, batch: GraphBatch, labels: LabelBatch | None) -> tuple:
        p = model(
            batch,
            compute_forces=compute_forces,
            compute_stress=compute_stress,
            create_graph=torch.is_grad_enabled(),
        )
        return p.energy, p.total_energy, p.forces, p.stress, p.magmoms

    return program


def loss_program(config: LossConfig, compute_forces: bool, compute_stress: bool) -> Program:
    """model(batch) and the loss -> (loss, energy, total_energy, forces, stress, magmoms)."""
    predict = predict_program(compute_forces, compute_stress)

    def program(model: nn.Module, batch: GraphBatch, labels: LabelBatch | None) -> tuple:
        if labels is None:
            raise ValueError("the loss program needs labels")
        energy, total_energy, forces, stress, magmoms = predict(model, batch, None)
        loss = fixed_shape_loss(energy, forces, stress, magmoms, labels, config)
        return loss, energy, total_energy, forces, stress, magmoms

    return program
