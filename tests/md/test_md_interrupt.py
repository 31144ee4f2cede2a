"""``fastchgnet md`` stopped by SIGINT or SIGTERM says in one line the step it reached and the
frames its trajectory holds (exit 130 / 143), with no traceback."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
from ase.build import bulk
from ase.io import read, write


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_md_says_where_it_stopped_in_one_line(tmp_path, signum, code):
    write(tmp_path / "si.extxyz", bulk("Si", "diamond", a=5.43, cubic=True))
    out = tmp_path / "md.extxyz"
    command = [sys.executable, "-m", "fastchgnet", "md", str(tmp_path / "si.extxyz"), "-o",
               str(out), "--steps", "1000000", "--loginterval", "5", "--compile", "off",
               "--quiet"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.is_file() and out.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "interrupted" in line]
    found = re.fullmatch(
        rf"md interrupted at step (\d+): {re.escape(str(out))} holds (\d+) frames", line
    )
    assert found, line
    frames = len(read(out, index=":"))
    assert int(found[2]) == frames
    assert int(found[1]) >= 5 * (frames - 1)


def test_md_writes_traj_files_frame_by_frame(tmp_path):
    """ASE's Trajectory writer (``.traj``) is an observer object, not a function."""
    from fastchgnet.cli import main

    write(tmp_path / "si.extxyz", bulk("Si", "diamond", a=5.43))
    out = tmp_path / "md.traj"
    argv = ["md", str(tmp_path / "si.extxyz"), "-o", str(out), "--steps", "4", "--loginterval", "2"]
    assert main([*argv, "--compile", "off", "--quiet", "--seed", "0"]) == 0
    assert len(read(out, index=":")) == 3
