"""A captured call shows no warning of torch's own that a user cannot act on: torch 2.13's
inductor deep-copies each graph, whose pytree specs are of a class torch deprecated, so every
compile warned "isinstance(treespec, LeafSpec) is deprecated"."""

from __future__ import annotations

import warnings

import torch

from fastchgnet.compile import CapturedModel
from tests.compile.conftest import padded_batch, small_model


def test_a_compile_shows_no_treespec_deprecation(monkeypatch):
    from torch.utils._pytree import LeafSpec

    model = small_model("conservative")
    captured = CapturedModel(model, backend="aot_eager", compute_stress=False)
    build = captured._build

    def noisy_build(*args, **kwargs):  # what inductor's graph copy does, in build and call
        LeafSpec()
        compiled = build(*args, **kwargs)

        def call(*inputs):
            LeafSpec()
            return compiled(*inputs)

        return call

    monkeypatch.setattr(captured, "_build", noisy_build)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            captured.predict(padded_batch()[0])
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
