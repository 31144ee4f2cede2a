"""A run with loader worker processes ends: its persistent workers ignore SIGTERM (so a
scheduler's SIGTERM to the group reaches the run's handler), and Python's exit, which
terminates them with SIGTERM and then joins them, waited for ever once the run had written
model.pt (every GPU run: loader_workers -1 means min(4, cores) there)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.train.helpers import TINY_ARCHITECTURE, small_cache

ROOT = Path(__file__).resolve().parents[2]


def test_a_run_with_loader_workers_exits_when_done(tmp_path):
    cache = small_cache(tmp_path / "cache", n=24)
    out = tmp_path / "run"
    overrides = [
        f"data.source={cache}",
        "data.batch_size=4",
        "data.loader_workers=2",
        "data.split=[0.75,0.125,0.125]",
        f"model.architecture={TINY_ARCHITECTURE}",
        f"run.out_dir={out}",
        "run.progress=lines",
        "run.compile=off",
        "optim.epochs=2",
    ]
    command = [sys.executable, str(ROOT / "launcher" / "train.py")]
    command += [f"--set={o}" for o in overrides]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "model.pt").is_file()
