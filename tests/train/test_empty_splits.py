"""Early stopping needs validation structures: without any it is refused in one line before
training (it stopped after epoch 1 for want of a score); an empty validation or test split
otherwise is a printed warning of what the run will not give."""

from __future__ import annotations

import pytest

from fastchgnet.cli import main
from fastchgnet.train.run import train
from tests.train.helpers import TINY_ARCHITECTURE, small_cache, tiny_config


def test_early_stopping_without_validation_structures_is_refused_before_training(tmp_path, capsys):
    cache = small_cache(tmp_path / "cache", n=24)
    out = tmp_path / "run"
    args = [
        f"data.source={cache}",
        "data.split=[1,0,0]",
        f"model.architecture={TINY_ARCHITECTURE}",
        "optim.early_stopping_patience=1",
        f"run.out_dir={out}",
    ]
    assert main(["train", *(f"--set={a}" for a in args)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert (
        "config optim.early_stopping_patience=1 needs validation structures and "
        "data.split=[1.0, 0.0, 0.0] leaves none" in err
    )
    assert not (out / "checkpoints").exists()


def test_empty_validation_and_test_splits_are_named_in_warnings(tmp_path, capsys):
    cache = small_cache(tmp_path / "cache", n=24)
    out = tmp_path / "run"
    train(tiny_config(cache, out, "data.split=[1,0,0]", "optim.epochs=1", "run.compile=off"))
    printed = capsys.readouterr().out
    assert "warning: no validation structures (data.split=[1.0, 0.0, 0.0])" in printed
    assert "no best_model.pt" in printed
    assert "warning: no test structures (data.split=[1.0, 0.0, 0.0])" in printed
    assert (out / "model.pt").is_file()
    assert not (out / "best_model.pt").exists()


def test_a_select_metric_the_validation_lacks_is_named(tmp_path, capsys):
    from fastchgnet.train.options import TrainingOptions

    config = tiny_config(tmp_path, tmp_path, "optim.select_metric=magmoms_mae")
    options = TrainingOptions(config, model=None, out_dir=tmp_path, is_main=True)
    assert not options.end_epoch(1, {"energy_mae": 10.0}, model=None)
    assert "warning: validation has no magmoms_mae" in capsys.readouterr().out


def test_a_select_metric_without_validation_labels_is_refused_before_training():
    # it trained, warned "validation has no magmoms_mae" and early stopping ended the run at
    # its patience, with no best_model.pt
    import numpy as np

    from fastchgnet.train.config import TrainConfig, apply_overrides
    from fastchgnet.train.run import check_select_metric

    no_magmoms = np.array([[True, True, True, False]] * 5)
    config = apply_overrides(TrainConfig(), ["optim.select_metric=magmoms_mae"])
    with pytest.raises(ValueError, match=r"select_metric=magmoms_mae: none of the 5 validation"):
        check_select_metric(config, no_magmoms)
    check_select_metric(config, np.vstack([no_magmoms, [[True, True, True, True]]]))
    check_select_metric(apply_overrides(TrainConfig(), []), no_magmoms)  # loss
    check_select_metric(config, no_magmoms[:0])  # no validation split: warned elsewhere


def test_training_without_magmom_labels_refuses_magmoms_mae_before_its_first_step(tmp_path):
    from fastchgnet.data.convert import convert
    from fastchgnet.data.sources import gunzip_ase_file, read_frames
    from fastchgnet.train.loading import quickstart_path

    plain = gunzip_ase_file(quickstart_path(), tmp_path)

    def without_magmoms():
        for _, frame in zip(range(60), read_frames(plain), strict=False):
            frame.magmoms = None
            yield frame

    convert(without_magmoms(), tmp_path / "cache", workers=1, progress=False)
    config = tiny_config(tmp_path / "cache", tmp_path / "run", "optim.select_metric=magmoms_mae")
    with pytest.raises(ValueError, match="select_metric=magmoms_mae: none of the"):
        train(config)
    assert not (tmp_path / "run" / "train_log.csv").exists()  # no step ran
