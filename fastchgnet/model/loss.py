"""The training loss, one form for eager and captured training and for every batch shape.

Huber or MSE per target, weighted by prefactors, missing labels masked. Each target's loss is
the mean over its labelled entries: energy per structure (eV/atom), forces per Cartesian
component (eV/Å), stress per tensor component (GPa), magnetic moments per atom (μB).

Fixed shapes throughout: instead of selecting labelled rows (``x[mask]``, a data-dependent
shape that a captured graph cannot hold and that makes a GPU wait for the host), every row's
pointwise loss is kept, unlabelled rows are zeroed, and the sum is divided by the number of
labelled entries (at least 1). A target with no labelled entry in the batch, and a batch of
padding only, contribute exactly zero with a zero (not missing) gradient for every parameter
that took part, so a rank without real structures still joins the gradient all-reduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

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


def loss_terms(prediction: object, labels: LabelBatch, config: LossConfig) -> dict[str, Tensor]:
    """Unweighted per-target losses (0-d tensors) for every target with a nonzero prefactor.

    Args:
        prediction: a ``Prediction`` (energy (S,) eV/atom, forces (N, 3) eV/Å, stress
            (S, 3, 3) GPa, magmoms (N,) μB); a needed field that is None is an error.
        labels: the batch's ``LabelBatch`` (same units and rows, with masks).
    """
    terms = {}
    for name, weight in config.weights().items():
        if weight == 0:
            continue
        predicted = getattr(prediction, name)
        if predicted is None:
            raise ValueError(f"the loss needs {name} but the model did not predict it")
        target, mask = getattr(labels, name), getattr(labels, f"{name}_mask")
        terms[name] = masked_mean_loss(predicted, target.to(predicted.dtype), mask, config)
    return terms


def training_loss(prediction: object, labels: LabelBatch, config: LossConfig) -> Tensor:
    """Prefactor-weighted sum of ``loss_terms`` (0-d tensor): the loss every training and
    evaluation path uses, eager and captured."""
    weights = config.weights()
    terms = loss_terms(prediction, labels, config)
    if not terms:
        raise ValueError("every loss prefactor is zero: nothing to train")
    return torch.stack([weights[name] * value for name, value in terms.items()]).sum()
