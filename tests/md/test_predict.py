"""Batched prediction through the one potential interface: a CompiledPotential gives the eager
numbers in input order, and one compiled shape serves a list (largest structures first)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastchgnet import FastCHGNet
from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.model.potential import EagerPotential, predict_structures


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
