"""Batched prediction through the one potential interface: a CompiledPotential gives the eager
numbers in input order, and one compiled shape serves a list (largest structures first)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastchgnet import FastCHGNet
from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.data.batch import collate
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.model.potential import EagerPotential, graphs_for, predict_structures


@pytest.mark.usefixtures("one_thread")
def test_compiled_batched_prediction_equals_eager_in_input_order() -> None:
    torch.manual_seed(0)
    model = FastCHGNet(forces="conservative").double()
    structures = varied_structures(10, seed=3, max_atoms=12)
    # aot_eager: the same traced graph without C++ code generation (fast)
    potential = CompiledPotential(model, backend="aot_eager")
    eager = model.predict_structure(structures, batch_size=4)
    compiled = predict_structures(potential, structures, batch_size=4)
    assert len(compiled) == len(structures)
    for structure, a, b in zip(structures, eager, compiled, strict=True):
        assert b["f"].shape == (len(structure), 3)
        for key in ("e", "f", "s", "m"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-9, atol=1e-10)
    # largest batch first: its shape (with headroom) serves the smaller batches after it
    assert potential.graphs_built == 1
    predict_structures(potential, structures[:3], batch_size=4)
    assert potential.graphs_built == 1  # a later call reuses the potential's compiled shape


def test_the_prediction_split_gives_each_structure_its_rows() -> None:
    torch.manual_seed(0)
    model = FastCHGNet(n_conv=2)
    structures = varied_structures(3, seed=1, max_atoms=6)
    together = predict_structures(model, structures, batch_size=3, features=True)
    for structure, joint in zip(structures, together, strict=True):
        alone = predict_structures(EagerPotential(model), structure, features=True)
        assert joint["f"].shape == (len(structure), 3)
        assert joint["site_energies"].shape == (len(structure),)
        for key, value in alone.items():
            np.testing.assert_allclose(joint[key], value, rtol=1e-4, atol=1e-5)


def test_eager_prediction_takes_no_weight_gradient_and_restores_the_flags() -> None:
    torch.manual_seed(0)
    model = FastCHGNet(n_conv=2).double().train()
    model.atom_convs[0].mlp_out.weight.requires_grad_(False)  # a frozen weight stays frozen
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    assert not before["composition.energies"]
    assert any(before.values())
    graphs = graphs_for(model.config, varied_structures(2, seed=4, max_atoms=6))
    seen: list[bool] = []
    hook = model.atom_convs[0].register_forward_hook(
        lambda *_: seen.append(any(p.requires_grad for p in model.parameters()))
    )
    got = EagerPotential(model).predict_graphs(graphs, stress=True)
    hook.remove()
    assert seen == [False]  # no weight path recorded during the call
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before
    assert model.training  # eval mode only for the call
    model.eval()
    plain = model(collate(graphs, dtype=torch.float64), compute_forces=True, compute_stress=True)
    for key in ("energy", "forces", "stress", "magmoms"):
        torch.testing.assert_close(getattr(got, key), getattr(plain, key), rtol=0, atol=0)
