"""``--set model.init=<file>`` on a config with an architecture says the override that works,
and that override does work."""

from __future__ import annotations

import re
import shlex

import pytest

from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.train.config import TrainConfig, apply_overrides
from fastchgnet.train.model_setup import build_model


def test_init_with_the_default_architecture_names_the_override_that_works(tmp_path) -> None:
    path = tmp_path / "model.pt"
    FastCHGNet(n_conv=2, atom_fea_dim=8, bond_fea_dim=8, angle_fea_dim=8).save(path)
    config = apply_overrides(TrainConfig(), [f"model.init={path}"])
    with pytest.raises(ValueError, match=re.escape("--set 'model.architecture={}'")) as info:
        build_model(config.model, 0)
    override = shlex.split(str(info.value).split("--set ", 1)[1])[0]
    fixed = apply_overrides(config, [override])
    assert build_model(fixed.model, 0).config.atom_fea_dim == 8
