"""The decompressed copy of a gzipped source is removed when conversion ends, fails, is
interrupted or is stopped by SIGTERM; a copy a killed process left is removed by the next."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ase.io import write

from fastchgnet.data import convert as convert_module
from fastchgnet.data.convert import convert
from fastchgnet.data.sources import COPY_PREFIX, read_frames
from fastchgnet.md.calculator import as_atoms
from tests.data.frames import rock_salt


def gzipped_frames(folder: Path, n: int = 6) -> Path:
    plain = folder / "f.extxyz"
    write(str(plain), [as_atoms(rock_salt(k)) for k in range(n)])
    packed = folder / "f.extxyz.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    return packed


def copies(scratch: Path) -> list[Path]:
    return sorted(scratch.glob(f"{COPY_PREFIX}*"))


def test_an_interrupted_conversion_removes_its_decompressed_copy(tmp_path, monkeypatch):
    source, scratch = gzipped_frames(tmp_path, n=100), tmp_path / "scratch"  # > one window
    scratch.mkdir()
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return graph_record(*args)

    graph_record = convert_module.graph_record
    monkeypatch.setattr(convert_module, "graph_record", interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:
        convert(read_frames(source, scratch=scratch), tmp_path / "c", workers=1, progress=False)
    assert caught.traceback  # the traceback (holding the reader) is still alive here
    assert copies(scratch) == []


def test_a_copy_left_by_a_killed_process_is_removed_by_the_next_conversion(tmp_path):
    source, scratch = gzipped_frames(tmp_path), tmp_path / "scratch"
    scratch.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = scratch / f"{COPY_PREFIX}{host}@{dead.pid}@abc123"
    live = scratch / f"{COPY_PREFIX}{host}@{os.getpid()}@def456"  # a running process's
    # another host sharing the folder, whose name extends this one's: "<host>-<digits>"
    # read as this host and a dead pid would delete a copy that host is still reading
    neighbour = scratch / f"{COPY_PREFIX}{host}-{dead.pid}@{os.getpid()}@ghi789"
    other = scratch / "tmpq1w2e3r4"  # not ours
    for folder in (stale, live, neighbour, other):
        folder.mkdir()
        (folder / "f.extxyz").write_text("copy")
    convert(read_frames(source, scratch=scratch), tmp_path / "c", workers=1, progress=False)
    assert copies(scratch) == sorted([live, neighbour])
    assert other.is_dir()


SLOW_CONVERSION = """
import sys, time
from pathlib import Path
from fastchgnet.data import convert as module
from fastchgnet.data.sources import read_frames
record = module.graph_record
def slow(*args):
    time.sleep(0.5)
    return record(*args)
module.graph_record = slow
if sys.argv[4] == "rank":  # a rank under a launcher: SIGTERM ends it with os._exit
    from fastchgnet.cli.train import _report_on_signal
    _report_on_signal(Path(sys.argv[2]), 0)
module.convert(read_frames(sys.argv[1], scratch=sys.argv[2]), sys.argv[3], workers=1)
"""


@pytest.mark.parametrize("process", ["single", "rank"])
def test_sigterm_during_conversion_removes_the_decompressed_copy(tmp_path, process):
    # a rank's SIGTERM handler exits at once (os._exit): no ``finally`` block runs there
    source, scratch = gzipped_frames(tmp_path, n=40), tmp_path / "scratch"
    scratch.mkdir()
    arguments = [str(source), str(scratch), str(tmp_path / "c"), process]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    converting = subprocess.Popen(
        [sys.executable, "-c", SLOW_CONVERSION, *arguments], env=env, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not copies(scratch) and converting.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert copies(scratch), "the conversion never decompressed its source"
    converting.send_signal(signal.SIGTERM)
    code = converting.wait(timeout=60)
    stderr = converting.stderr.read()
    converting.stderr.close()
    assert code == 128 + signal.SIGTERM, stderr
    assert copies(scratch) == []
