"""The one loss: masked labels never count, prefactors weight the targets, Huber and MSE as
defined, and a padding-only batch gives zero loss with a zero gradient for every parameter."""

from __future__ import annotations

import pytest
import torch

from fastchgnet.data.labels import LabelBatch
from fastchgnet.model.chgnet import Prediction
from fastchgnet.model.loss import LossConfig, loss_terms, masked_mean_loss, training_loss


def _batch(seed: int = 0) -> tuple[Prediction, LabelBatch]:
    g = torch.Generator().manual_seed(seed)
    n_structures, n_atoms = 3, 7
    prediction = Prediction(
        energy=torch.randn(n_structures, generator=g, requires_grad=True),
        total_energy=torch.zeros(n_structures),
        forces=torch.randn(n_atoms, 3, generator=g, requires_grad=True),
        stress=torch.randn(n_structures, 3, 3, generator=g, requires_grad=True),
        magmoms=torch.rand(n_atoms, generator=g, requires_grad=True),
    )
    labels = LabelBatch(
        energy=torch.randn(n_structures, generator=g),
        energy_mask=torch.tensor([True, False, True]),
        forces=torch.randn(n_atoms, 3, generator=g),
        forces_mask=torch.tensor([True] * 4 + [False] * 3),
        stress=torch.randn(n_structures, 3, 3, generator=g),
        stress_mask=torch.tensor([False, True, True]),
        magmoms=torch.rand(n_atoms, generator=g),
        magmoms_mask=torch.tensor([False] * 7),
    )
    return prediction, labels


def test_masked_labels_do_not_change_the_loss() -> None:
    prediction, labels = _batch()
    config = LossConfig()
    before = training_loss(prediction, labels, config)
    labels.energy[1] = 1e6
    labels.forces[5:] = -1e6
    labels.stress[0] = 1e6
    labels.magmoms[:] = 1e6
    after = training_loss(prediction, labels, config)
    assert torch.equal(before, after)


def test_target_without_labels_contributes_zero_and_no_gradient() -> None:
    prediction, labels = _batch()
    terms = loss_terms(prediction, labels, LossConfig())
    assert terms["magmoms"].item() == 0.0
    terms["magmoms"].backward()
    assert prediction.magmoms.grad is None or torch.all(prediction.magmoms.grad == 0)


def test_huber_and_mse_match_their_definitions_per_component() -> None:
    prediction, labels = _batch(1)
    rows = labels.forces_mask
    error = (prediction.forces - labels.forces)[rows].detach()
    delta = 0.3
    huber = torch.where(
        error.abs() < delta, 0.5 * error**2, delta * (error.abs() - 0.5 * delta)
    ).mean()
    got = masked_mean_loss(prediction.forces, labels.forces, rows, LossConfig(huber_delta=delta))
    assert torch.allclose(got, huber)
    mse = masked_mean_loss(prediction.forces, labels.forces, rows, LossConfig(kind="mse"))
    assert torch.allclose(mse, (error**2).mean())


def test_prefactors_weight_each_target() -> None:
    prediction, labels = _batch(2)
    config = LossConfig(energy=2.0, forces=1.5, stress=0.1, magmoms=0.1)
    terms = loss_terms(prediction, labels, config)
    expected = 2.0 * terms["energy"] + 1.5 * terms["forces"] + 0.1 * terms["stress"]
    assert torch.allclose(
        training_loss(prediction, labels, config), expected + 0.1 * terms["magmoms"]
    )
    only_energy = LossConfig(forces=0.0, stress=0.0, magmoms=0.0)
    assert set(loss_terms(prediction, labels, only_energy)) == {"energy"}


def test_loss_config_rejects_negative_prefactor_and_unknown_kind() -> None:
    with pytest.raises(ValueError, match="negative"):
        LossConfig(forces=-1.0)
    with pytest.raises(ValueError, match="huber"):
        LossConfig(kind="l1")


def _gradient_after(model: torch.nn.Module, batch: object, labels: object) -> dict:
    model.zero_grad(set_to_none=True)
    training_loss(model(batch), labels, LossConfig()).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("forces", ["conservative", "direct"])
def test_padding_only_batch_gives_zero_loss_and_zero_gradient_for_every_parameter(forces) -> None:
    from fastchgnet.data.padding import PADDING_ONLY, collate_padded
    from tests.compile.conftest import padded_batch, small_model

    model = small_model(forces)
    batch, labels = collate_padded([], PADDING_ONLY, [])
    assert training_loss(model(batch), labels, LossConfig()).item() == 0.0
    padding = _gradient_after(model, batch, labels)
    real = _gradient_after(model, *padded_batch())
    # the same parameters get a gradient as from real structures (a rank with padding only
    # hands DeepSpeed the same gradient buckets), and every one of them is zero
    assert set(padding) == set(real)
    assert all(torch.count_nonzero(g) == 0 for g in padding.values())
