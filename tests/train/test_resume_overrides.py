"""A --resume continues the checkpoint's run: a --set that changes its batches or model is
refused in one line (a changed data.batch_size re-planned the epochs behind the checkpoint's
step: a run resumed at step 90 of 171 ended at 119, silently); an optimiser change is said."""

from __future__ import annotations

import argparse

import pytest

from fastchgnet.cli import train as cli_train
from fastchgnet.train.config import TrainConfig


def resumed(monkeypatch, tmp_path, *overrides: str) -> TrainConfig:
    stored = TrainConfig().to_dict()
    stored["run"]["out_dir"] = str(tmp_path)
    monkeypatch.setattr(cli_train, "stored_config", lambda root: stored)
    args = argparse.Namespace(config=None, overrides=list(overrides), resume=True)
    return cli_train.resolve_config(args)


def test_a_resume_that_changes_the_batches_is_refused(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"^--resume: data\.batch_size was 32, --set gives 16"):
        resumed(monkeypatch, tmp_path, f"run.out_dir={tmp_path}", "data.batch_size=16")
    with pytest.raises(ValueError, match=r"^--resume: model\.architecture"):
        resumed(monkeypatch, tmp_path, "model.architecture.n_conv=4")


def test_a_resume_may_change_how_data_is_read_and_says_an_optimiser_change(
    monkeypatch, tmp_path, capsys
):
    config = resumed(monkeypatch, tmp_path, "data.loader_workers=2", "run.threads=1")
    assert config.data.loader_workers == 2
    assert capsys.readouterr().err == ""
    config = resumed(monkeypatch, tmp_path, "optim.epochs=20")
    assert config.optim.epochs == 20
    assert "--resume: optim.epochs changed" in capsys.readouterr().err


def resumed_with_file(monkeypatch, tmp_path, text: str, **stored_changes) -> TrainConfig:
    stored = TrainConfig().to_dict()
    stored["run"]["out_dir"] = str(tmp_path)
    for section, changes in stored_changes.items():
        stored[section].update(changes)
    monkeypatch.setattr(cli_train, "stored_config", lambda root: stored)
    config = tmp_path / "run.toml"
    config.write_text(f'[run]\nout_dir = "{tmp_path}"\n{text}')
    args = argparse.Namespace(config=str(config), overrides=[], resume=True)
    return cli_train.resolve_config(args)


def test_resume_refuses_a_config_file_that_changes_the_architecture(monkeypatch, tmp_path):
    # the file's keys were ignored on --resume: the run went on with the old ones, no word
    text = "[model.architecture]\natom_fea_dim = 64\n"
    with pytest.raises(ValueError, match="atom_fea_dim") as refused:
        resumed_with_file(monkeypatch, tmp_path, text)
    said = f"--resume: model.architecture.atom_fea_dim was 32, --config {tmp_path / 'run.toml'}"
    assert str(refused.value).startswith(f"{said} gives 64: a resume continues")


def test_resume_applies_a_config_file_epochs_change_and_says_so(monkeypatch, tmp_path, capsys):
    config = resumed_with_file(monkeypatch, tmp_path, "[optim]\nepochs = 5\nlr = 1e-4\n")
    assert (config.optim.epochs, config.optim.lr) == (5, 1e-4)
    err = capsys.readouterr().err
    assert f"--resume: optim.lr, optim.epochs changed by --config {tmp_path / 'run.toml'}" in err


def test_resume_keeps_a_set_the_file_does_not_name(monkeypatch, tmp_path, capsys):
    # a run started with --set data.batch_size=16 over a file without it resumes as it was
    config = resumed_with_file(monkeypatch, tmp_path, "[optim]\n", data={"batch_size": 16})
    assert config.data.batch_size == 16
    assert capsys.readouterr().err == ""


def test_resume_compares_a_config_file_table_only_by_the_keys_it_gives(
    monkeypatch, tmp_path, capsys
):
    # a partial [model.architecture] was compared whole: a run started with --set
    # model.architecture.n_conv=2 was refused ('n_conv was 2, --config run.toml gives None'),
    # and so was a file naming a key at the checkpoint's own value ('bond_fea_dim ... None')
    stored = TrainConfig().to_dict()
    model = {"architecture": {**stored["model"]["architecture"], "n_conv": 2}}
    data = {"labels": {**stored["data"]["labels"], "forces": "F"}}
    text = "[model.architecture]\natom_fea_dim = 32\n[data.labels]\nenergy = 'energy'\n"
    config = resumed_with_file(monkeypatch, tmp_path, text, model=model, data=data)
    assert config.model.architecture == model["architecture"]
    assert config.data.labels.forces == "F"
    assert capsys.readouterr().err == ""
    text = "[model.architecture]\nn_conv = 3\n"
    with pytest.raises(ValueError, match=r"^--resume: model\.architecture\.n_conv was 2, --conf"):
        resumed_with_file(monkeypatch, tmp_path, text, model=model)


def test_resume_says_a_run_setting_the_config_file_changes(monkeypatch, tmp_path, capsys):
    config = resumed_with_file(monkeypatch, tmp_path, "log_every = 7\n")
    assert config.run.log_every == 7
    said = f"--resume: run.log_every changed by --config {tmp_path / 'run.toml'}: applied"
    assert said in capsys.readouterr().err


def test_a_refused_set_is_not_told_to_repeat_its_own_set(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="--set gives 16") as refused:
        resumed(monkeypatch, tmp_path, "data.batch_size=16")
    assert "repeat the run's own --set" not in str(refused.value)
