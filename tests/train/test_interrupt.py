"""SIGINT and SIGTERM stop a one-process run with a checkpoint at the step it reached and one
line saying where (exit 130 / 143); ``--resume`` then ends as an uninterrupted run does."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.signals import StopSignals
from fastchgnet.train.checkpoint import latest_step
from fastchgnet.train.interrupt import Interrupted
from tests.train.helpers import small_cache, tiny_config, tiny_settings

ROOT = Path(__file__).resolve().parents[2]
#: checkpoints only at epoch ends (any mid-epoch one is the signal's), EMA on, a row a step
SETTINGS = (
    "optim.epochs=8",
    "optim.ema_decay=0.9",
    "run.checkpoint_every=0",
    "run.log_every=1",
    "run.compile=off",
)


def test_a_signal_while_deferring_is_a_request_and_a_second_one_raises():
    signals = StopSignals(Interrupted)
    with signals.installed(), signals.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.requested
        with pytest.raises(Interrupted) as stop:
            os.kill(os.getpid(), signal.SIGINT)
    assert stop.value.exit_code == 130
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_stop_between_epochs_names_the_epoch_done():
    """A stop while a finished 2-epoch run drew its plots said "(epoch 3)"."""
    from fastchgnet.train.checkpoint import Progress

    stop = Interrupted(signal.SIGINT)
    stop.at(Progress(epoch=2, step_in_epoch=0, global_step=170))
    assert stop.where == "at step 170 (after epoch 2)"
    stop.at(Progress(epoch=1, step_in_epoch=3, global_step=88))
    assert stop.where == "at step 88 (epoch 2)"


def test_a_signal_outside_the_epochs_raises_at_once():
    with StopSignals(Interrupted).installed(), pytest.raises(Interrupted) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
    stop.value.at(None)
    assert stop.value.exit_code == 143
    assert stop.value.message() == (
        "interrupted before training: no checkpoint yet; start again with --overwrite"
    )


def _command(cache: Path, out: Path, *extra: str) -> list[str]:
    overrides = tiny_settings(cache, out, *SETTINGS)
    launcher = str(ROOT / "launcher" / "train.py")
    return [sys.executable, launcher, *(f"--set={o}" for o in overrides), *extra]


def _logged_rows(out: Path) -> int:
    try:
        return len((out / "train_log.csv").read_text().splitlines()) - 1
    except FileNotFoundError:
        return 0


def _interrupt(cache: Path, out: Path, signum: int) -> str:
    """Start the launcher, send ``signum`` once 4 steps are logged; its stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        _command(cache, out),
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while process.poll() is None and _logged_rows(out) < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before it could be interrupted"
    os.kill(process.pid, signum)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, err
    return err


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return FastCHGNet.load(path).state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signalled_run_checkpoints_its_step_and_resumes_to_the_same_result(tmp_path, signum):
    from fastchgnet.train.run import train

    cache = small_cache(tmp_path / "cache", n=48)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(tiny_config(cache, straight, *SETTINGS))

    err = _interrupt(cache, stopped, signum)
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    found = re.fullmatch(
        r"interrupted at step (\d+) \((?:after )?epoch \d+\): checkpoint at step (\d+); "
        r"continue with "
        r"--resume",
        last,
    )
    assert found, last
    assert found[1] == found[2] == str(latest_step(stopped / "checkpoints"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(_command(cache, stopped, "--resume"), check=True, env=env, cwd=ROOT)

    assert (straight / "metrics.csv").read_text() == (stopped / "metrics.csv").read_text()
    for name in ("model.pt", "best_model.pt"):
        a, b = _weights(straight / name), _weights(stopped / name)
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_a_stop_outside_training_names_the_newest_checkpoint(tmp_path, monkeypatch, capsys):
    """launcher/finetune.py stopped in its evaluation after training (Interrupted raised by
    its own handler, no checkpoint recorded) advised --overwrite, which deletes the run."""
    from fastchgnet.cli.train import interrupted
    from fastchgnet.train import checkpoint

    monkeypatch.setattr(checkpoint, "latest_step", lambda root: 40)
    assert interrupted(Interrupted(signal.SIGTERM), tmp_path) == 143
    assert "checkpoint at step 40; continue with --resume" in capsys.readouterr().err


def test_an_interrupt_of_several_ranks_is_printed_once(tmp_path, monkeypatch, capsys):
    """Ctrl-C under a launcher stops every rank; each printed "interrupted: ..." (8 ranks, 8
    lines). Now rank 0 prints it, once the ranks have begun a launch (``failures``) and before
    (the launcher's numbering); every rank still exits 130."""
    from fastchgnet.cli.train import interrupted
    from fastchgnet.train import failures

    line = "interrupted: no checkpoint yet; start again with --overwrite\n"
    try:
        for rank in (0, 1):
            failures.begin(tmp_path, rank, 2, "t1")
            assert interrupted(KeyboardInterrupt(), tmp_path) == 130
            assert capsys.readouterr().err == (line if rank == 0 else "")
    finally:
        failures.end()
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert interrupted(KeyboardInterrupt(), tmp_path) == 130
        assert capsys.readouterr().err == (line if rank == 0 else "")
