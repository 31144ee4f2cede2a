"""A training checkpoint of a run with EMA on, read as a model (``fastchgnet predict --model
CHECKPOINT``, a run folder without model.pt, ``model.init=``), gives the EMA weights the run
validated with and saved as model.pt, said on stderr; the raw ones stay reachable. It gave
the raw weights, silently."""

from __future__ import annotations

import pytest
import torch

from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.train.checkpoint import latest_checkpoint, rank_file
from fastchgnet.train.model_setup import load_from_path
from tests.train.helpers import small_cache, tiny_config


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    from fastchgnet.train.run import train

    root = tmp_path_factory.mktemp("ema-checkpoint")
    out = root / "run"
    settings = ("optim.epochs=1", "optim.ema_decay=0.5", "run.compile=off", "run.threads=1")
    train(tiny_config(small_cache(root / "cache", n=16), out, *settings))
    return out


def _same(a: FastCHGNet, b: FastCHGNet) -> bool:
    one, two = a.state_dict(), b.state_dict()
    return one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_a_checkpoint_of_an_ema_run_loads_the_ema_weights_and_says_so(ema_run, capsys):
    newest = rank_file(latest_checkpoint(ema_run / "checkpoints"), 0)
    ema, raw = (
        FastCHGNet.load(ema_run / "model.pt"),
        FastCHGNet.load(ema_run / "model_last_weights.pt"),
    )
    assert not _same(ema, raw)
    assert _same(load_from_path(newest), ema)
    assert f"{newest}: the EMA weights (optim.ema_decay=0.5" in capsys.readouterr().err
    assert _same(load_from_path(newest, weights="raw"), raw)
    (ema_run / "model.pt").rename(ema_run / "kept.pt")  # an interrupted run's folder
    try:
        assert _same(load_from_path(ema_run), ema)
    finally:
        (ema_run / "kept.pt").rename(ema_run / "model.pt")


def test_the_ema_notice_is_said_once_under_a_launcher(ema_run, capsys, monkeypatch):
    """model.init= a checkpoint under several ranks printed the notice on every rank."""
    from fastchgnet.train.launchers import LAUNCHER_VARIABLES

    for names in LAUNCHER_VARIABLES:
        for name in names:
            monkeypatch.delenv(name, raising=False)
    newest = rank_file(latest_checkpoint(ema_run / "checkpoints"), 0)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    load_from_path(newest)
    assert "EMA weights" not in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    load_from_path(newest)
    assert "EMA weights" in capsys.readouterr().err
