"""A resumed run reports what the uninterrupted one does: the epoch's train loss (printed,
history), summary.json's structures and train_log.csv. The epoch's running totals started
from zero after a resume (the resumed epoch's loss was its tail's, the structures only those
trained after it); they are now kept in every checkpoint."""

from __future__ import annotations

import csv
import json

import pytest

from fastchgnet.train.checkpoint import latest_checkpoint, load_checkpoint
from fastchgnet.train.config import apply_overrides
from fastchgnet.train.plots import epoch_means
from tests.train.helpers import small_cache, tiny_config

#: 43 train structures / batch 4 = 11 steps an epoch: step 13 is inside epoch 2
STOP_AT = 13


def _history(out) -> list[float]:
    main, _ = load_checkpoint(latest_checkpoint(out / "checkpoints"), 0, 1)
    return [epoch["loss"] for epoch in main["history"]]


def test_a_resumed_run_reports_the_epoch_loss_and_structures_of_the_uninterrupted_run(
    tmp_path, capsys
):
    from fastchgnet.train.run import train

    cache = small_cache(tmp_path / "cache", n=48)
    settings = ("optim.epochs=3", "run.compile=off", "run.log_every=1", "run.checkpoint_every=5")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(tiny_config(cache, straight, *settings))
    printed = [line for line in capsys.readouterr().out.splitlines() if "train loss" in line]
    config = tiny_config(cache, stopped, *settings, f"run.max_steps={STOP_AT}")
    train(config)
    capsys.readouterr()
    train(apply_overrides(config, ["run.max_steps=0"]), resume=True)
    resumed = [line for line in capsys.readouterr().out.splitlines() if "train loss" in line]

    assert resumed == printed[1:]  # epoch 1 ended before the stop
    assert _history(straight) == _history(stopped)
    summaries = [json.loads((out / "summary.json").read_text()) for out in (straight, stopped)]
    assert summaries[0]["structures"] == summaries[1]["structures"] > 0
    logs = [(out / "train_log.csv").read_text() for out in (straight, stopped)]
    assert logs[0] == logs[1]
    with (stopped / "train_log.csv").open() as handle:
        epochs, means = epoch_means(list(csv.DictReader(handle)))
    assert epochs == [1, 2, 3]
    assert means == pytest.approx(_history(stopped), rel=1e-12)


def test_latest_progress_reads_the_totals_and_a_pointer_written_before_them(tmp_path):
    from fastchgnet.train.checkpoint import Progress, latest_progress, save_checkpoint

    progress = Progress(epoch=1, step_in_epoch=3, global_step=12, epoch_loss=2.5, structures=40)
    save_checkpoint(
        tmp_path,
        rank=0,
        world_size=1,
        progress=progress,
        engine_state={},
        model=None,
        config={},
        history=[],
    )
    assert latest_progress(tmp_path) == progress
    pointer = json.loads((tmp_path / "latest.json").read_text())
    for key in ("epoch_loss", "epoch_finite", "epoch_skipped", "structures", "train_seconds"):
        del pointer[key]
    (tmp_path / "latest.json").write_text(json.dumps(pointer))
    assert latest_progress(tmp_path) == Progress(epoch=1, step_in_epoch=3, global_step=12)


def test_a_mid_epoch_checkpoint_counts_the_seconds_of_its_epoch_so_far(tmp_path):
    """Its structures counted the epoch so far but its seconds only the epochs before (0 in
    the first): a run killed after it resumed with a structures-per-second rate too high."""
    from fastchgnet.train.checkpoint import rank_file, read_verified
    from fastchgnet.train.run import train

    cache = small_cache(tmp_path / "cache", n=48)
    out = tmp_path / "run"
    settings = ("optim.epochs=1", "run.compile=off", "run.checkpoint_every=5", "run.keep=10")
    train(tiny_config(cache, out, *settings))
    seconds = [
        read_verified(rank_file(out / "checkpoints" / f"step-{step:08d}", 0))["progress"]
        for step in (5, 10, 11)
    ]
    assert 0 < seconds[0]["train_seconds"] < seconds[1]["train_seconds"]
    assert seconds[1]["train_seconds"] <= seconds[2]["train_seconds"]
    assert 0 < seconds[0]["structures"] < seconds[1]["structures"] < seconds[2]["structures"]
