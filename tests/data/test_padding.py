"""Padding to a capacity changes no real output and never reaches the loss."""

from __future__ import annotations

import pytest
import torch

from fastchgnet import FastCHGNet, build_graph, collate
from fastchgnet.data.capacity import Capacity
from fastchgnet.data.padding import collate_padded, pad_graphs, unpad
from fastchgnet.data.random_crystals import no_angle_structure, varied_structures

STRUCTURES = [*varied_structures(4, seed=21, max_atoms=16), no_angle_structure()]
GRAPHS = [build_graph(s) for s in STRUCTURES]


def _capacity(graphs, *, short: bool, slack: int = 7) -> Capacity:
    return Capacity(
        structures=len(graphs) + 2,
        atoms=sum(g.n_atoms for g in graphs) + slack,
        bonds=sum(g.n_bonds for g in graphs) + 3 * slack,
        angles=sum(g.n_angles for g in graphs) + 5 * slack,
        short_bonds=sum(g.n_short_bonds for g in graphs) + slack if short else None,
    )


def _random_model(forces: str) -> FastCHGNet:
    torch.manual_seed(0)
    model = FastCHGNet(forces=forces, coupled_updates=forces == "conservative").double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


@pytest.mark.parametrize("forces", ["conservative", "direct"])
@pytest.mark.parametrize("short", [True, False], ids=["short-capacity", "all-bonds-short"])
def test_padding_changes_no_real_output(forces, short):
    model = _random_model(forces)
    capacity = _capacity(GRAPHS, short=short)
    plain = model(collate(GRAPHS, dtype=torch.float64))
    padded_batch, _ = collate_padded(GRAPHS, capacity, dtype=torch.float64)
    padded = model(padded_batch)
    n_structures, n_atoms = len(GRAPHS), sum(g.n_atoms for g in GRAPHS)
    for name, rows in (
        ("energy", n_structures),
        ("stress", n_structures),
        ("forces", n_atoms),
        ("magmoms", n_atoms),
    ):
        expected, got = getattr(plain, name), unpad(getattr(padded, name), rows)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10, msg=name)
        assert torch.isfinite(getattr(padded, name)).all(), f"padding {name} not finite"


def test_padded_batch_has_the_capacity_shape():
    capacity = _capacity(GRAPHS, short=True)
    batch, labels = collate_padded(GRAPHS, capacity, labels=[_labels(g) for g in GRAPHS])
    assert batch.n_structures == capacity.structures + 1
    assert batch.atomic_numbers.shape[0] == capacity.atoms
    assert batch.bond_atoms.shape[0] == capacity.bonds
    assert batch.n_short_bonds == capacity.short_bonds
    assert batch.angle_edges.shape[0] == capacity.angles
    n_atoms = sum(g.n_atoms for g in GRAPHS)
    assert labels.forces_mask[:n_atoms].all()
    assert not labels.forces_mask[n_atoms:].any()
    assert labels.energy_mask.tolist() == [True] * len(GRAPHS) + [False] * 3


def test_padding_never_reaches_the_loss_gradient():
    model = _random_model("conservative").train()
    capacity = _capacity(GRAPHS, short=True)
    labels = [_labels(g) for g in GRAPHS]

    def parameter_gradients(batch, label_batch):
        model.zero_grad()
        out = model(batch)
        mask = label_batch.energy_mask
        loss = ((out.energy - label_batch.energy)[mask] ** 2).mean()
        fmask = label_batch.forces_mask
        loss = loss + ((out.forces - label_batch.forces)[fmask] ** 2).mean()
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    from fastchgnet.data.labels import collate_labels

    plain = collate(GRAPHS, dtype=torch.float64)
    plain_labels = collate_labels(labels, [g.n_atoms for g in GRAPHS], dtype=torch.float64)
    padded, padded_labels = collate_padded(GRAPHS, capacity, labels, dtype=torch.float64)
    for a, b in zip(
        parameter_gradients(plain, plain_labels),
        parameter_gradients(padded, padded_labels),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_batch_that_does_not_fit_is_an_error():
    capacity = _capacity(GRAPHS, short=True, slack=0)
    with pytest.raises(ValueError, match="padding atom"):
        pad_graphs(GRAPHS, capacity)


def _labels(graph):
    from types import SimpleNamespace

    return SimpleNamespace(
        energy_per_atom=-3.0,
        forces=torch.full((graph.n_atoms, 3), 0.1).numpy(),
        stress=None,
        magmoms=None,
    )


def test_tight_capacity_fits_every_list_exactly_with_bond_graph_slots_apart():
    from fastchgnet.data.capacity import tight_capacity
    from fastchgnet.data.graph import build_graph
    from fastchgnet.data.random_crystals import varied_structures

    graphs = [build_graph(s) for s in varied_structures(6, seed=2, max_atoms=10)]
    lists = [graphs[:2], graphs[2:6]]
    capacity = tight_capacity(lists)
    assert capacity.structures == 4
    assert capacity.short_bonds == max(sum(g.n_short_bonds for g in gs) for gs in lists) + 1
    for gs in lists:
        batch, _ = collate_padded(gs, capacity)
        assert batch.n_short_bonds == capacity.short_bonds
        assert batch.bond_atoms.shape[0] == capacity.bonds
        assert batch.angle_edges.shape[0] == capacity.angles
