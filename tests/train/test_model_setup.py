"""Model set-up: freezing by name prefix, loading our files, reference weights for fine-tuning."""

from __future__ import annotations

import json

import pytest

from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.train.config import ModelSection
from fastchgnet.train.model_setup import build_model, freeze, load_from_path
from tests.train.helpers import TINY_ARCHITECTURE


def test_freeze_stops_exactly_the_named_parts() -> None:
    model = FastCHGNet(**json.loads(TINY_ARCHITECTURE))
    frozen = freeze(model, ["atom_embedding", "atom_convs.0"])
    for name, parameter in model.named_parameters():
        named = name.startswith(("atom_embedding.", "atom_convs.0."))
        assert (name in frozen) == named
        if named:
            assert not parameter.requires_grad
    assert any(p.requires_grad for n, p in model.named_parameters() if n.startswith("atom_convs.1"))


def test_freeze_with_a_typo_is_an_error() -> None:
    model = FastCHGNet(**json.loads(TINY_ARCHITECTURE))
    with pytest.raises(ValueError, match="matches no parameter"):
        freeze(model, ["atom_embeding"])


def test_new_model_weights_depend_only_on_the_seed() -> None:
    section = ModelSection(architecture=json.loads(TINY_ARCHITECTURE))
    a, b = build_model(section, seed=3), build_model(section, seed=3)
    assert all((p == q).all() for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_our_model_file_loads_as_init(tmp_path) -> None:
    model = FastCHGNet(**json.loads(TINY_ARCHITECTURE))
    model.save(tmp_path / "model.pt")
    loaded = load_from_path(tmp_path / "model.pt")
    assert loaded.config == model.config


def test_reference_init_brings_pretrained_weights_and_refuses_an_architecture() -> None:
    pytest.importorskip("chgnet")
    model = build_model(
        ModelSection(init="reference:0.3.0", architecture={}, freeze=("atom_embedding",)), 0
    )
    assert model.n_params > 400_000
    assert not model.atom_embedding.weight.requires_grad
    with pytest.raises(ValueError, match="architecture"):
        build_model(ModelSection(init="reference:0.3.0", architecture={"atom_fea_dim": 64}), 0)
    assert ModelSection(init="reference:0.3.0").architecture == {}  # the default's is dropped
