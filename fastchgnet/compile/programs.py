"""The two model calls that get captured: prediction, and prediction plus the training loss.

The loss is ``fastchgnet.model.loss.training_loss``, the one loss of eager and captured
training (fixed shapes, masked means), so a captured graph holds it as it is. ``real_part``
takes the real structures' rows, and the outputs asked for, out of a padded prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

import torch
from torch import nn

from fastchgnet.compile.trace import Program
from fastchgnet.data.batch import GraphBatch, joined_copy
from fastchgnet.data.graph import CrystalGraph
from fastchgnet.data.labels import LabelBatch
from fastchgnet.data.padding import unpad
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


def real_part(
    padded: Prediction,
    graphs: Sequence[CrystalGraph],
    stress: bool,
    features: bool,
    copy: bool,
    forces: bool = True,
) -> Prediction:
    """The rows of ``graphs`` (the real structures, first) in a padded call's Prediction,
    with forces, stress and features only when asked. With ``copy``, in new memory made in
    one copy per dtype (``joined_copy``), which ``Prediction.split`` then takes to the host as
    it is: one device copy and one wait per dtype, instead of a copy per field and a join."""
    rows = {"structures": len(graphs), "atoms": sum(g.n_atoms for g in graphs)}
    skipped = {name for name, asked in (("stress", stress), ("forces", forces)) if not asked}
    if not features:
        skipped |= {"atom_features", "crystal_features"}
    real = {
        f.name: unpad(value, rows["atoms" if f.name in Prediction.PER_ATOM else "structures"])
        for f in fields(Prediction)
        if f.name not in skipped and (value := getattr(padded, f.name)) is not None
    }
    return Prediction(**(joined_copy(real) if copy else real))
