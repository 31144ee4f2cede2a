"""Batched prediction through the compiled model: same numbers, input order kept, few shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastchgnet import FastCHGNet
from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.data.synthetic import varied_structures
from fastchgnet.md import predict as predict_module


@pytest.mark.usefixtures("one_thread")
def test_compiled_batched_prediction_equals_eager_in_input_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    model = FastCHGNet(forces="conservative").double()
    structures = varied_structures(10, seed=3, max_atoms=12)
    # aot_eager: the same traced graph without C++ code generation (fast); seeded into the
    # per-model cache that predict_structures consults
    potential = CompiledPotential(model, backend="aot_eager")
    monkeypatch.setitem(predict_module._COMPILED, model, potential)
    eager = model.predict_structure(structures, batch_size=4, compiled=False)
    compiled = model.predict_structure(structures, batch_size=4, compiled=True)
    assert len(compiled) == len(structures)
    for structure, a, b in zip(structures, eager, compiled, strict=True):
        assert b["f"].shape == (len(structure), 3)
        for key in ("e", "f", "s", "m"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-9, atol=1e-10)
    # largest batch first: its shape (with headroom) serves the smaller batches after it
    assert potential.graphs_built == 1
    model.predict_structure(structures[:3], batch_size=4, compiled=True)
    assert potential.graphs_built == 1  # a later call reuses the model's compiled shape


def test_compiled_defaults_to_off_on_a_cpu_model() -> None:
    model = FastCHGNet()
    model.predict_structure(varied_structures(1, seed=0, max_atoms=4)[0])
    assert model not in predict_module._COMPILED
