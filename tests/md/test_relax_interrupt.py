"""``fastchgnet relax`` stopped by SIGINT or SIGTERM keeps what is done: -o holds the structures
finished and the current geometry of the one relaxing (``interrupted``), the trajectory its
frames so far, and one line says so (exit 130 / 143), with no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from ase.build import bulk
from ase.io import read, write


def _inputs(folder):
    """A crystal that converges at once (symmetric, fixed cell), then two that take long."""
    write(folder / "a.extxyz", bulk("Si", "diamond", a=5.43))
    for name, seed in (("b", 1), ("c", 2)):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
        atoms.rattle(0.2, seed=seed)
        write(folder / f"{name}.extxyz", atoms)
    return [str(folder / f"{name}.extxyz") for name in "abc"]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_relax_writes_the_structures_done(tmp_path, signum, code):
    out, trajectory = tmp_path / "relaxed.extxyz", tmp_path / "traj.extxyz"
    command = [sys.executable, "-m", "fastchgnet", "relax", *_inputs(tmp_path), "-o", str(out),
               "--trajectory", str(trajectory), "--fixed-cell", "--fmax", "1e-7", "--steps",
               "100000", "--batch-size", "1", "--compile", "off"]  # fmt: skip
    # every bar update shown: the first structure converged within tqdm's 0.1 s, so "1/3" was
    # often never drawn and the test waited out its 120 s before the signal
    environment = os.environ | {"TQDM_MININTERVAL": "0"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )
    err: list[str] = []

    def read_stderr() -> None:
        while char := process.stderr.read(1):
            err.append(char)

    reader = threading.Thread(target=read_stderr)
    reader.start()
    deadline = time.monotonic() + 120
    while "1/3" not in "".join(err) and time.monotonic() < deadline:  # the progress bar
        time.sleep(0.1)
    time.sleep(8.0)  # the first structure converged in one model call; the second takes steps
    process.send_signal(signum)
    process.wait(timeout=60)
    reader.join(timeout=10)
    text = "".join(err)
    assert process.returncode == code, text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if "relax interrupted" in line]
    assert len(lines) == 1
    assert lines[0].endswith(f"relax interrupted: 1 of 3 structures converged, written to {out}")
    frames = read(out, index=":")
    assert [f.info["name"] for f in frames] == ["a.extxyz[0]", "b.extxyz[0]"]
    assert frames[0].info["converged"]
    assert "interrupted" not in frames[0].info
    assert not frames[1].info["converged"]
    assert frames[1].info["interrupted"]
    steps = read(trajectory, index=":")
    assert {f.info["structure"] for f in steps} == {0, 1}
    assert len(steps) > 2
