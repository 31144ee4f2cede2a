"""Interrupting ``data convert`` (SIGINT, SIGTERM) prints one line naming the complete shards
kept and how to continue, with exit code 130 / 143, not a traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write


def _many_frames(path, n=3000):
    frames = []
    for seed in range(n):
        atoms = bulk("Si", "diamond", a=5.43)
        atoms.positions[1] += np.random.default_rng(seed).uniform(-0.05, 0.05, 3)
        atoms.calc = SinglePointCalculator(atoms, energy=-10.8, forces=np.zeros((2, 3)))
        frames.append(atoms)
    write(path, frames)
    return path


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_convert_says_what_it_kept_in_one_line(tmp_path, signum, code):
    source, out = _many_frames(tmp_path / "big.extxyz"), tmp_path / "c"
    command = [sys.executable, "-m", "fastchgnet", "data", "convert", str(source), "-o",
               str(out), "--workers", "1", "--shard-size", "20"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "shard-00000" / "shard.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("data convert interrupted")]
    assert len(lines) == 1
    assert f"complete shard(s) kept in {out}; run the same command again to continue" in lines[0]
