"""The matgl side of bench/bench_matgl.py: matgl's CHGNet at chgnet 0.3.0's sizes and its own
Huber loss step (skipped where matgl is not installed; bench/ is imported by path)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("matgl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import matgl_side


@pytest.fixture(scope="module")
def parts():
    return matgl_side.matgl_training_parts(lr=1e-3)


def test_matgl_chgnet_has_chgnet_030_sizes(parts) -> None:
    chgnet = parts[0].model.model
    assert chgnet.atom_embedding.embedding_dim == 64
    assert chgnet.n_blocks == 4
    assert len(chgnet.atom_graph_layers) == 4
    assert len(chgnet.bond_graph_layers) == 3
    assert (chgnet.cutoff, chgnet.three_body_cutoff) == (6.0, 3.0)
    assert chgnet.bond_embedding.layers[0].in_features == 31  # radial bases
    assert chgnet.angle_embedding.layers[0].in_features == 31  # Fourier bases
    assert chgnet.bond_embedding.layers[0].out_features == 64
    assert chgnet.angle_embedding.layers[0].out_features == 64
    readout = [
        m.out_features for m in chgnet.final_layer.modules() if isinstance(m, torch.nn.Linear)
    ]
    assert readout == [64, 64, 64, 1]
    norms = [m for m in chgnet.atom_graph_layers.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms, "the atom blocks have no LayerNorm"
    assert sum(p.numel() for p in chgnet.parameters()) > 400_000  # chgnet 0.3.0: 412,525


def test_matgl_step_is_huber_on_efsm_with_asked_weights_and_updates_weights(parts) -> None:
    from fastchgnet.data.random_crystals import varied_structures

    module, optimizer = parts
    structures = varied_structures(3, seed=4, max_atoms=6)[1:]
    rng = np.random.default_rng(0)
    labels = [
        SimpleNamespace(
            energy_per_atom=-3.0,
            forces=rng.normal(0, 0.5, (len(s), 3)),
            stress=rng.normal(0, 1, (3, 3)),
            magmoms=-np.abs(rng.normal(0, 1, len(s))),  # negative: matgl compares |m|
        )
        for s in structures
    ]
    batch = matgl_side.matgl_batch(matgl_side.matgl_graphs(module, structures), labels)
    g, lat, state, *targets = batch
    e, f, s, _, m = module(g=g, lat=lat, state_attr=state)
    n = torch.tensor([len(x) for x in structures], dtype=torch.float32)

    def huber(a, b):
        return torch.nn.functional.huber_loss(a, b, delta=0.1)

    expected = (
        huber(targets[0] / n, e / n)
        + huber(targets[1], f)
        + 0.1 * huber(targets[2], s)
        + 0.1 * huber(targets[3].abs(), m)
    )
    before = [p.detach().clone() for p in module.parameters()]
    loss = matgl_side.matgl_step(module, optimizer, batch, 0)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    changed = [not torch.equal(a, p) for a, p in zip(before, module.parameters(), strict=True)]
    assert sum(changed) > len(changed) // 2
