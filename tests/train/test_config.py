"""TrainConfig: the quick-start file is the defaults; unknown keys and wrong types are errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastchgnet.train.config import TrainConfig, apply_overrides, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_quickstart_file_is_exactly_the_defaults() -> None:
    assert load_config(CONFIGS / "quickstart.toml") == TrainConfig()


def test_mptrj_config_is_the_paper_setup() -> None:
    config = load_config(CONFIGS / "mptrj.toml")
    arch = config.model.architecture
    assert (arch["atom_fea_dim"], arch["num_radial"], arch["num_angular"]) == (64, 31, 31)
    assert (arch["atom_cutoff"], arch["bond_cutoff"]) == (6.0, 3.0)
    assert config.optim.epochs == 30
    assert config.optim.optimizer == "adam"
    assert config.optim.lr == 3e-4
    assert config.optim.lr_scaling == "linear"
    assert config.optim.scheduler == "cosine"
    assert config.loss.kind == "huber"
    weights = config.loss.weights()
    assert weights == {"energy": 2.0, "forces": 1.5, "stress": 0.1, "magmoms": 0.1}
    assert config.data.split == (0.9, 0.05, 0.05)


def test_finetune_config_loads_with_frozen_parts() -> None:
    config = load_config(CONFIGS / "finetune.toml")
    assert config.model.init == "reference:0.3.0"
    assert config.model.freeze == ("atom_embedding", "atom_convs.0")


def test_unknown_key_in_a_file_is_rejected(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(ValueError, match=r"optim\.learning_rate"):
        load_config(path)


def test_wrong_type_and_bad_choice_are_rejected() -> None:
    with pytest.raises(ValueError, match="expected an integer"):
        apply_overrides(TrainConfig(), ["data.batch_size=1.5"])
    with pytest.raises(ValueError, match="choose one of"):
        apply_overrides(TrainConfig(), ["optim.scheduler=linear"])


def test_overrides_parse_json_values_and_reach_the_architecture() -> None:
    config = apply_overrides(
        TrainConfig(),
        ["optim.epochs=3", "data.split=[0.8,0.1,0.1]", "model.architecture.forces=direct"],
    )
    assert config.optim.epochs == 3
    assert config.data.split == (0.8, 0.1, 0.1)
    assert config.model.architecture["forces"] == "direct"


def test_config_round_trips_through_a_plain_dict() -> None:
    config = apply_overrides(TrainConfig(), ['model.freeze=["atom_embedding"]'])
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=0", "config data.batch_size=0: must be at least 1"),
        ("data.size_pool=-1", "config data.size_pool=-1: must be >= 0"),
        ("data.loader_workers=-2", "config data.loader_workers=-2: must be >= -1"),
        ("data.convert_workers=0", "config data.convert_workers=0: must be at least 1"),
        ("data.max_structures=-5", "config data.max_structures=-5: must be >= 0"),
        ("data.replay_fraction=1.5", "config data.replay_fraction=1.5: must be in [0, 1]"),
        ("data.split=[0.5,0.6,0.1]", "config data.split=[0.5, 0.6, 0.1]: give the train, val"),
        ("data.split=[0.9,0.2,-0.1]", "summing to 1 (-0.1 is not)"),  # it said "sum to 1"
        ("data.split=[1.2,-0.1,-0.1]", "config data.split=[1.2, -0.1, -0.1]: give the train"),
        ("data.split=[0.5,0.5,NaN]", "config data.split=[0.5, 0.5, nan]: give the train"),
        ("data.replay_fraction=0.5", "config data.replay_fraction=0.5 without data.replay_source"),
        ("run.out_dir=", "config run.out_dir='': must name a folder (. for this one)"),
        (
            "data.replay_source=/missing.extxyz",
            "config data.replay_source='/missing.extxyz' with data.replay_fraction=0 replays",
        ),
    ],
)
def test_data_values_out_of_range_are_one_line_naming_the_key(override, message):
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        load_config(None, [override])
    assert "\n" not in str(raised.value)
