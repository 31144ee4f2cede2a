"""The two model calls that get captured: prediction, and prediction plus the training loss.

The loss is ``fastchgnet.model.loss.training_loss``, the one loss of eager and captured
training (fixed shapes, masked means), so a captured graph holds it as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from fastchgnet.compile.trace import Program
from fastchgnet.data.batch import GraphBatch
from fastchgnet.data.labels import LabelBatch
from fastchgnet.model.chgnet import Prediction
from fastchgnet.model.loss import LossConfig, training_loss

#: Output order of ``predict_program``.
PREDICTION_OUTPUTS = ("energy", "total_energy", "forces", "stress", "magmoms", "site_energies")
#: Outputs a ``features`` prediction program adds.
FEATURE_OUTPUTS = ("atom_features", "crystal_features")


def predict_program(compute_forces: bool, compute_stress: bool, features: bool = False) -> Program:
    """model(batch) -> (energy, total_energy, forces, stress, magmoms, site_energies) and,
    with ``features``, (atom_features, crystal_features); see ``Prediction``."""
    names = PREDICTION_OUTPUTS + (FEATURE_OUTPUTS if features else ())

    def program(model: nn.Module, batch: GraphBatch, labels: LabelBatch | None) -> tuple:
        p = model(
            batch,
            compute_forces=compute_forces,
            compute_stress=compute_stress,
            create_graph=torch.is_grad_enabled(),
            return_features=features,
        )
        return tuple(getattr(p, name) for name in names)

    return program


def loss_program(config: LossConfig, compute_forces: bool, compute_stress: bool) -> Program:
    """model(batch) and the loss -> (loss, *the prediction outputs)."""
    predict = predict_program(compute_forces, compute_stress)

    def program(model: nn.Module, batch: GraphBatch, labels: LabelBatch | None) -> tuple:
        if labels is None:
            raise ValueError("the loss program needs labels")
        outputs = predict(model, batch, None)
        prediction = Prediction(**dict(zip(PREDICTION_OUTPUTS, outputs, strict=True)))
        return (training_loss(prediction, labels, config), *outputs)

    return program
