"""A run's main process holds its run.out_dir while it runs: a second run there (--resume or
--overwrite of the live run among them) is refused in one line. Before, a --resume started
beside a live run trained the same epoch twice into one metrics.csv, and an --overwrite
deleted the live run's outputs under it (both exited 0)."""

from __future__ import annotations

import os

import pytest

from fastchgnet.train.outputs import run_lock


def test_a_folder_held_by_a_run_is_refused_naming_the_process(tmp_path):
    with (
        run_lock(tmp_path),
        pytest.raises(ValueError, match="a run is going on there") as refusal,
        run_lock(tmp_path),
    ):
        pass
    message = str(refusal.value)
    assert message.startswith(f"run.out_dir {tmp_path}: a run is going on there (pid {os.getpid()}")
    with run_lock(tmp_path):  # released when the run ends
        pass


@pytest.mark.parametrize("flags", [["--overwrite"], []])
def test_launcher_train_refuses_a_folder_a_live_run_holds(tmp_path, capsys, flags):
    """(--resume is refused the same way once the live run has a checkpoint.)"""
    from fastchgnet.cli.train import main

    with run_lock(tmp_path):
        assert main(["--set", f"run.out_dir={tmp_path}", *flags]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "a run is going on there" in err
