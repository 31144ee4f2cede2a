"""ModelConfig checks the type and size of every setting in one line naming it: a string
width was a TypeError traceback from torch.empty, an int for a list of widths 'int object is
not iterable', and a width of 0 built a model that failed mid-epoch."""

from __future__ import annotations

import re

import pytest

from fastchgnet.model.config import ModelConfig
from fastchgnet.train.config import load_config


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"atom_fea_dim": "x"}, "atom_fea_dim='x': expected an integer"),
        ({"atom_fea_dim": 0}, "atom_fea_dim=0: must be at least 1"),
        ({"n_conv": 1.5}, "n_conv=1.5: expected an integer"),
        ({"num_radial": -3}, "num_radial=-3: must be at least 1"),
        ({"mlp_hidden_dims": 5}, "mlp_hidden_dims=5: expected a list"),
        ({"mlp_hidden_dims": [16, 0]}, "mlp_hidden_dims=[16, 0]: widths must be at least 1"),
        ({"head_hidden_dims": ["a"]}, "head_hidden_dims='a': expected an integer"),
        ({"atom_cutoff": "6"}, "atom_cutoff='6': expected float"),
        ({"learnable_rbf": 1}, "learnable_rbf=1: expected true or false"),
        ({"angle_hidden_dim": -1}, "angle_hidden_dim=-1: must be >= 0"),
    ],
)
def test_a_bad_architecture_value_is_one_line_naming_the_key(setting, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        ModelConfig.from_dict(setting)
    assert "\n" not in str(raised.value)


def test_lists_become_tuples_and_integers_floats_where_asked() -> None:
    config = ModelConfig.from_dict({"mlp_hidden_dims": [8, 8], "atom_cutoff": 5})
    assert config.mlp_hidden_dims == (8, 8)
    assert isinstance(config.atom_cutoff, float)


def test_the_run_config_checks_the_architecture_naming_it() -> None:
    """Caught by --print-config already, not when the model is built or mid-epoch."""
    with pytest.raises(ValueError, match=r"^config model\.architecture: atom_fea_dim=0: must"):
        load_config(None, ["model.architecture.atom_fea_dim=0"])
