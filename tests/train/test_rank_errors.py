"""Under a launcher, an error is said once: by the rank it happened on, naming it; the ranks
that stop because of it say nothing (``train.failures``). Two CPU ranks under ``deepspeed``
(both ranks' stderr reach the launcher's): each rank printed its own line before, so the user
read the error, and an echo of it, once per rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.train.helpers import small_cache
from tests.train.test_distributed import ENV, ROOT, _command

#: the training command line, with a RuntimeError raised in rank 1's third training step
FAILING_STEP = """
import os
import sys

from fastchgnet.train import step

if os.environ["RANK"] == "1":
    original, calls = step.TrainStep.__call__, []

    def failing(self, batch, labels):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("a bad batch on rank 1")
        return original(self, batch, labels)

    step.TrainStep.__call__ = failing

from fastchgnet.cli.train import main

sys.exit(main())
"""


def _errors(tmp_path: Path, *overrides: str, script: str | None = None) -> tuple[int, str]:
    """(exit code, the ranks' stderr without DeepSpeed's launcher's log lines) of a 2-rank
    one-epoch run on 24 structures (no validation split) with ``overrides``."""
    pytest.importorskip("deepspeed")
    cache = small_cache(tmp_path / "cache", n=24)
    command = _command(tmp_path / "run", cache, "optim.epochs=1", *overrides)
    if script is not None:
        path = tmp_path / "train_failing.py"
        path.write_text(script)
        command[command.index(str(ROOT / "launcher" / "train.py"))] = str(path)
    done = subprocess.run(command, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("[")]
    stderr = "\n".join(line for line in lines if line in done.stderr.splitlines())
    return done.returncode, stderr


@pytest.mark.slow
def test_an_error_in_one_ranks_step_is_said_by_that_rank_alone(tmp_path) -> None:
    # rank 0, whose collective failed when rank 1 exited, said 'rank 0 stops: rank 1 (pid
    # ...) is gone (RuntimeError: [...gloo...] Connection closed by peer ...)'; rank 1 said
    # 'rank 1 stops: its peer processes on this host are all alive (RuntimeError: ...)'
    code, stderr = _errors(tmp_path, script=FAILING_STEP)
    assert code == 1, stderr
    assert stderr.startswith("fastchgnet train: error: rank 1 failed:\nTraceback"), stderr
    assert stderr.endswith("RuntimeError: a bad batch on rank 1"), stderr
    assert stderr.count("a bad batch on rank 1") == 2  # the raise in the traceback, the error
    assert "rank 0" not in stderr


@pytest.mark.slow
def test_an_error_every_rank_meets_is_said_once(tmp_path) -> None:
    # early stopping without validation structures: every rank raises the same ValueError
    code, stderr = _errors(tmp_path, "optim.early_stopping_patience=2")
    assert code == 1, stderr
    assert stderr.count("\n") == 0, stderr
    assert stderr.startswith("fastchgnet train: error: rank 0: config ")
    assert "needs validation structures" in stderr


@pytest.mark.slow
def test_rank_0s_refusal_of_the_data_is_said_once(tmp_path) -> None:
    # rank 1 said 'fastchgnet train: error: rank 0 stopped: <rank 0's error>' after it
    missing = tmp_path / "missing.extxyz"
    code, stderr = _errors(tmp_path, f"data.source={missing}")
    assert code == 1, stderr
    assert stderr == f"fastchgnet train: error: rank 0: {missing}: no such file or directory"


def _training_under_way(tmp_path: Path, **popen) -> tuple[subprocess.Popen, Path]:
    """A 2-rank 50-epoch run (``popen``: more ``subprocess.Popen`` options) once its steps are
    under way, and its output folder."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "run"
    command = _command(out, small_cache(tmp_path / "cache", n=48), "optim.epochs=50")
    process = subprocess.Popen(
        command, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        **popen,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    log = out / "train_log.csv"
    while process.poll() is None and time.monotonic() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) > 4:  # steps under way
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    return process, out


@pytest.mark.slow
def test_an_interrupt_of_every_rank_is_said_once(tmp_path) -> None:
    """SIGINT to each rank (as a terminal's Ctrl-C reaches them) once training is under way:
    each rank printed 'interrupted: ...'. Now one line, and the exit code is still 130."""
    process, out = _training_under_way(tmp_path)
    for record in sorted((out / "ranks").glob("rank-*.json")):  # each rank's pid
        os.kill(json.loads(record.read_text())["pid"], signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert lines == ["interrupted: no checkpoint yet; start again with --overwrite"], err


@pytest.mark.slow
def test_a_ctrl_c_to_the_launchers_process_group_is_said_once(tmp_path) -> None:
    """Ctrl-C in a terminal: SIGINT reaches the launcher and every rank at once, and the
    launcher answers it with SIGTERM to the ranks, often before they have said anything. Each
    rank then printed 'rank N stops: its peer processes on this host are all alive (signal
    15)' and no 'interrupted' line. Now one 'interrupted' line and no 'stops:' line."""
    # its own process group, as a terminal's foreground job
    process, _ = _training_under_way(tmp_path, start_new_session=True)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode != 0, err
    lines = [line for line in err.splitlines() if "interrupted" in line and "[" not in line]
    assert lines == ["interrupted: no checkpoint yet; start again with --overwrite"], err
    assert "stops:" not in err, err
