"""Exact resume: a run killed mid-epoch and resumed reaches the same parameters, bit for bit.

Single process on CPU, same seed: the resumed run restores weights, Adam moments, scheduler,
sampler position (epoch, step in epoch) and RNG states, so every later step repeats the
uninterrupted run's arithmetic exactly. Tolerance: none (torch.equal on every tensor).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastchgnet.train.checkpoint import latest_checkpoint, load_checkpoint
from tests.train.helpers import TINY_ARCHITECTURE, small_cache

ROOT = Path(__file__).resolve().parents[2]
#: 36 train structures / batch 4 = 9 steps per epoch: 30 steps cross three epoch ends.
MAX_STEPS = 30


def _command(out_dir: Path, cache: Path, *extra: str) -> list[str]:
    """The launcher with a tiny model on ``cache``, a checkpoint every 2 steps."""
    overrides = [
        f"data.source={cache}",
        "data.batch_size=4",
        "data.split=[0.75,0.125,0.125]",
        f"model.architecture={TINY_ARCHITECTURE}",
        f"run.out_dir={out_dir}",
        "run.checkpoint_every=2",
        f"run.max_steps={MAX_STEPS}",
        "run.progress=lines",
        "run.plots=false",
        "optim.lr=0.001",
        "optim.epochs=4",
    ]
    launcher = str(ROOT / "launcher" / "train.py")
    return [sys.executable, launcher, *(f"--set={o}" for o in overrides), *extra]


def _pointer_step(pointer: Path) -> int:
    """The global step of the newest checkpoint named by ``latest.json`` (-1: none yet)."""
    try:
        return int(json.loads(pointer.read_text())["global_step"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def _final_state(out_dir: Path) -> dict:
    folder = latest_checkpoint(out_dir / "checkpoints")
    main, _ = load_checkpoint(folder, 0, 1)
    assert main["progress"]["global_step"] == MAX_STEPS
    return main


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted_run_exactly(tmp_path) -> None:
    cache = small_cache(tmp_path / "cache", n=48)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    straight = tmp_path / "straight"
    subprocess.run(_command(straight, cache), check=True, env=env, cwd=ROOT, timeout=900)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(_command(interrupted, cache), env=env, cwd=ROOT)
    pointer = interrupted / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if 4 <= _pointer_step(pointer) < MAX_STEPS:  # any checkpoint past step 4: kill now
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be interrupted"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = latest_checkpoint(interrupted / "checkpoints")
    assert killed_at is not None
    step = int(killed_at.name.split("-")[1])
    assert 4 <= step < MAX_STEPS

    subprocess.run(
        _command(interrupted, cache, "--resume"), check=True, env=env, cwd=ROOT, timeout=900
    )
    a, b = _final_state(straight), _final_state(interrupted)
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    state_a = a["engine"]["optimizer"]["state"]
    state_b = b["engine"]["optimizer"]["state"]
    for key in state_a:
        for field in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state_a[key][field], state_b[key][field])
    assert a["engine"]["scheduler"] == b["engine"]["scheduler"]
