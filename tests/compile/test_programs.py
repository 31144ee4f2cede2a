"""The fixed-shape loss equals fastchgnet.train.loss (value and gradient)."""

from __future__ import annotations

import pytest
import torch

from fastchgnet.compile.programs import fixed_shape_loss
from fastchgnet.train.loss import LossConfig, loss_terms, total_loss
from tests.compile.conftest import padded_batch, small_model


@pytest.mark.parametrize("kind", ["huber", "mse"])
def test_fixed_shape_loss_equals_the_training_loss_with_missing_labels(kind):
    batch, labels = padded_batch()
    model = small_model("direct").train()
    config = LossConfig(kind=kind)
    prediction = model(batch)
    expected = total_loss(loss_terms(prediction, labels, config), config)
    got = fixed_shape_loss(
        prediction.energy, prediction.forces, prediction.stress, prediction.magmoms, labels, config
    )
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    weight = model.atom_embedding.weight
    (g_expected,) = torch.autograd.grad(expected, [weight], retain_graph=True)
    (g_got,) = torch.autograd.grad(got, [weight])
    torch.testing.assert_close(g_got, g_expected, rtol=1e-5, atol=1e-8)
