"""``--set model.init=<file>`` drops the default architecture (the model brings its own); an
architecture the user gave is refused, naming the override that works, and that override
works."""

from __future__ import annotations

import re
import shlex

import pytest

from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.train.config import TrainConfig, apply_overrides, load_config
from fastchgnet.train.model_setup import build_model


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.pt"
    FastCHGNet(n_conv=2, atom_fea_dim=8, bond_fea_dim=8, angle_fea_dim=8).save(path)
    return path


def test_init_from_a_model_file_needs_no_architecture_override(saved) -> None:
    # was: "model.architecture applies to init='scratch' only ... add --set
    # 'model.architecture={}'", though the user never set an architecture
    config = apply_overrides(TrainConfig(), [f"model.init={saved}"])
    assert config.model.architecture == {}
    assert build_model(config.model, 0).config.atom_fea_dim == 8


def test_an_init_that_is_no_file_says_so(tmp_path) -> None:
    config = apply_overrides(TrainConfig(), ["model.init=scratch2"])
    with pytest.raises(FileNotFoundError, match="scratch2: no such model or checkpoint file"):
        build_model(config.model, 0)


def test_init_with_an_architecture_given_names_the_override_that_works(saved, tmp_path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(f'[model]\ninit = "{saved}"\n[model.architecture]\natom_fea_dim = 64\n')
    config = load_config(toml)
    with pytest.raises(ValueError, match=re.escape("--set 'model.architecture={}'")) as info:
        build_model(config.model, 0)
    override = shlex.split(str(info.value).split("--set ", 1)[1])[0]
    fixed = apply_overrides(config, [override])
    assert build_model(fixed.model, 0).config.atom_fea_dim == 8
