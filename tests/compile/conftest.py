"""A small model and a small padded batch with labels: compile tests stay quick on 2 cores."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fastchgnet import FastCHGNet
from fastchgnet.data.capacity import Capacity
from fastchgnet.data.graph import build_graph
from fastchgnet.data.padding import collate_padded
from fastchgnet.data.random_crystals import varied_structures

SMALL = dict(
    atom_fea_dim=16,
    bond_fea_dim=16,
    angle_fea_dim=16,
    atom_conv_hidden_dim=16,
    bond_conv_hidden_dim=16,
    mlp_hidden_dims=(16,),
    head_hidden_dims=(16,),
    n_conv=3,
)


def small_model(forces: str, dtype: torch.dtype = torch.float32) -> FastCHGNet:
    torch.manual_seed(0)
    return FastCHGNet(forces=forces, coupled_updates=forces == "conservative", **SMALL).to(dtype)


def padded_batch(dtype: torch.dtype = torch.float32, n: int = 4, seed: int = 1):
    graphs = [build_graph(s) for s in varied_structures(n, seed=seed, max_atoms=8)]
    rng = np.random.default_rng(seed)
    labels = [
        SimpleNamespace(
            energy_per_atom=float(rng.normal()),
            forces=rng.normal(size=(g.n_atoms, 3)),
            stress=None if k == 1 else rng.normal(size=(3, 3)),
            magmoms=None if k == 2 else np.abs(rng.normal(size=g.n_atoms)),
        )
        for k, g in enumerate(graphs)
    ]
    capacity = Capacity(
        n + 1,
        sum(g.n_atoms for g in graphs) + 3,
        sum(g.n_bonds for g in graphs) + 9,
        sum(g.n_angles for g in graphs) + 8,
    )
    return collate_padded(graphs, capacity, labels, dtype=dtype)


@pytest.fixture(scope="module")
def batch_and_labels():
    return padded_batch()


def nvt_integrator(crystal, calc):
    """A copy of ``crystal`` (ASE Atoms) with seeded momenta and ``calc``, and its NVT
    Berendsen integrator (300 K, 2 fs): the same trajectory for any calculator that agrees."""
    from fastchgnet.md.dynamics import make_integrator

    atoms = crystal.copy()
    atoms.set_momenta(np.random.default_rng(0).normal(scale=0.3, size=(len(atoms), 3)))
    atoms.calc = calc
    return make_integrator(atoms, "nvt", "berendsen", temperature=300, timestep=2.0)
