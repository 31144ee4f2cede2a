"""EMA of the weights, best-on-validation model, early stopping, replay of a base data set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.train.ema import WeightEMA
from fastchgnet.train.selection import BestTracker, validation_score
from tests.train.helpers import small_cache, tiny_config


def test_ema_averages_steps_and_swaps_back():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightEMA(model, decay=0.9)
    for value in (1.0, 1.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.19))  # 0.1, then 0.19
    with ema.applied(model):
        assert torch.allclose(model.weight, torch.full((1, 2), 0.19))
    assert torch.equal(model.weight, torch.ones(1, 2))
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(model, decay=1.0)


def test_tracker_keeps_best_and_stops_after_patience():
    tracker = BestTracker(patience=2)
    assert [tracker.update(e, s) for e, s in enumerate([3.0, 2.0, 2.5, math.nan], 1)] == [
        True,
        True,
        False,
        False,
    ]
    assert (tracker.best, tracker.best_epoch, tracker.should_stop) == (2.0, 2, True)
    assert not BestTracker(patience=0, stale=9).should_stop


def test_validation_score_weights_maes_by_the_loss_prefactors():
    results = {"energy_mae": 10.0, "forces_mae": 100.0, "stress_mae": 1.0}
    weights = {"energy": 2.0, "forces": 1.5, "stress": 0.1, "magmoms": 0.1}
    # each MAE in the loss's unit (eV/atom, eV/Å, GPa, μB), not the reported meV
    assert validation_score(results, "loss", weights) == pytest.approx(0.02 + 0.15 + 0.1)
    assert validation_score(results, "forces_mae", weights) == 100.0
    assert math.isnan(validation_score(results, "magmoms_mae", weights))


def test_run_saves_ema_best_and_last_and_stops_early(tmp_path):
    from fastchgnet.train.run import train

    cache = small_cache(tmp_path / "cache", n=48)
    config = tiny_config(
        cache,
        tmp_path / "run",
        "optim.epochs=6",
        "optim.ema_decay=0.5",
        "optim.early_stopping_patience=1",
        "optim.lr=0.0",  # nothing improves after the first epoch: stop at epoch 2
    )
    summary = train(config)
    out = tmp_path / "run"
    assert summary.val, "the split must hold validation structures"
    rows = (out / "metrics.csv").read_text().splitlines()
    assert sum(",val," in row for row in rows) == 2  # epoch 2 did not improve: stopped
    assert sum(",test," in row for row in rows) == 1
    assert (out / "best_model.txt").read_text().startswith("epoch 1:")
    for name in ("model.pt", "best_model.pt", "model_last_weights.pt"):
        FastCHGNet.load(out / name)


def test_ema_model_differs_from_last_weights(tmp_path):
    from fastchgnet.train.run import train

    cache = small_cache(tmp_path / "cache", n=24)
    train(tiny_config(cache, tmp_path / "run", "optim.epochs=1", "optim.ema_decay=0.9"))
    ema = FastCHGNet.load(tmp_path / "run" / "model.pt").state_dict()
    last = FastCHGNet.load(tmp_path / "run" / "model_last_weights.pt").state_dict()
    assert any(not torch.equal(ema[k], last[k]) for k in ema if ema[k].is_floating_point())


def test_replay_frames_join_train_only(tmp_path):
    from ase.io import write

    from fastchgnet.data.sources import gunzip_ase_file, read_ase
    from fastchgnet.train.cache_sources import resolve_cache
    from fastchgnet.train.config import DataConfig
    from fastchgnet.train.loading import make_splits, quickstart_path
    from fastchgnet.train.replay import replay_sample

    plain = gunzip_ase_file(quickstart_path(), tmp_path)
    from ase.io import read

    images = read(str(plain), index=":60")
    write(str(tmp_path / "new.extxyz"), images[:20])
    write(str(tmp_path / "base.extxyz"), images[20:])
    drawn = [f.frame_id for f in replay_sample(read_ase(tmp_path / "base.extxyz"), 0.5)]
    assert drawn == [f.frame_id for f in replay_sample(read_ase(tmp_path / "base.extxyz"), 0.5)]
    assert 10 <= len(drawn) <= 30
    config = DataConfig(
        source=str(tmp_path / "new.extxyz"),
        replay_source=str(tmp_path / "base.extxyz"),
        replay_fraction=0.5,
        split=(0.5, 0.25, 0.25),
    )
    splits = make_splits(resolve_cache(config, tmp_path, (6.0, 3.0), True), config)
    ids = splits.dataset.frame_ids.astype(str)
    replayed = np.flatnonzero(np.char.startswith(ids, "replay:"))
    assert len(replayed) == len(drawn)
    assert set(replayed) <= set(splits.train)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 20 + len(drawn)


def test_max_structures_limits_the_source_and_the_replay_share_joins_on_top(tmp_path):
    """data.max_structures capped the cache, replay frames included, so that the replayed
    frames (chained after the source) were cut and then left out of the split: silently
    none joined. Now the cap is the source's and every drawn replay frame trains."""
    from ase.io import read, write

    from fastchgnet.data.sources import gunzip_ase_file, read_ase
    from fastchgnet.train.cache_sources import resolve_cache
    from fastchgnet.train.config import DataConfig
    from fastchgnet.train.loading import make_splits, quickstart_path
    from fastchgnet.train.replay import replay_sample

    images = read(str(gunzip_ase_file(quickstart_path(), tmp_path)), index=":50")
    write(str(tmp_path / "new.extxyz"), images[:30])
    write(str(tmp_path / "base.extxyz"), images[30:])
    drawn = [f.frame_id for f in replay_sample(read_ase(tmp_path / "base.extxyz"), 0.5)]
    config = DataConfig(
        source=str(tmp_path / "new.extxyz"),
        replay_source=str(tmp_path / "base.extxyz"),
        replay_fraction=0.5,
        split=(0.5, 0.25, 0.25),
        max_structures=12,
    )
    splits = make_splits(resolve_cache(config, tmp_path, (6.0, 3.0), True), config)
    assert len(drawn) > 0
    assert splits.replayed == len(drawn)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 12 + len(drawn)
    trained = splits.dataset.frame_ids.astype(str)[splits.train]
    assert sorted(trained[np.char.startswith(trained, "replay:")]) == sorted(drawn)
