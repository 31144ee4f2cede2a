"""A truncated or foreign .zip (VASP runs) or .gz (ASE frames) is a one-line error naming the
file in `data convert` and `data stats`, not a BadZipFile or EOFError traceback."""

from __future__ import annotations

import gzip
import json

import pytest
from ase.io import write

from fastchgnet.cli import main
from fastchgnet.md.calculator import as_atoms
from tests.data.frames import rock_salt


def damaged(tmp_path, kind: str):
    if kind == "zip":
        path = tmp_path / "run.zip"
        path.write_bytes(b"PK\x03\x04" + b"\x00" * 200)  # a zip's start, then nothing
        return path
    plain = tmp_path / "f.extxyz"
    write(str(plain), [as_atoms(rock_salt(k)) for k in range(40)])
    whole = gzip.compress(plain.read_bytes())
    path = tmp_path / "f.extxyz.gz"
    path.write_bytes(whole[: len(whole) // 2])  # truncated
    return path


@pytest.mark.parametrize("kind", ["zip", "gz"])
@pytest.mark.parametrize("command", ["convert", "stats"])
def test_a_damaged_archive_is_a_one_line_error_naming_it(tmp_path, capsys, kind, command):
    path = damaged(tmp_path, kind)
    args = ["data", command, str(path)] + (["-o", str(tmp_path / "cache")] * (command == "convert"))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]  # beside a progress bar
    assert f"{path}: not a readable" in line


def test_a_truncated_extxyz_keeps_its_frames_before_the_cut_and_reports_the_rest(tmp_path):
    # the whole conversion failed: 0 frames converted
    from fastchgnet.data.cache import GraphDataset

    plain = tmp_path / "f.extxyz"
    write(str(plain), [as_atoms(rock_salt(k)) for k in range(6)])
    text = plain.read_text()
    plain.write_text(text[: int(len(text) * 0.9)])  # the last frame cut short
    assert main(["data", "convert", str(plain), "-o", str(tmp_path / "cache")]) == 0
    assert len(GraphDataset(tmp_path / "cache")) == 5
    skipped = (tmp_path / "cache" / "skipped.json").read_text()
    assert "ASE cannot read frame 5" in skipped
    assert "atom lines follow (the file ends)" in skipped


def test_a_damaged_trajectory_frame_is_reported_and_the_frames_after_it_kept(tmp_path):
    # iread stopped at the damaged frame: the frames after it were not read
    from ase.io.trajectory import Trajectory

    from fastchgnet.data.cache import GraphDataset

    path = tmp_path / "f.traj"
    write(str(path), [as_atoms(rock_salt(k)) for k in range(5)])
    with Trajectory(str(path)) as trajectory:
        start = int(trajectory.backend._offsets[1]) + 8  # frame 1's JSON, after its size
    data = bytearray(path.read_bytes())
    data[start + 1 : start + 3] = b"\xff\xff"  # not UTF-8
    path.write_bytes(bytes(data))
    assert main(["data", "convert", str(path), "-o", str(tmp_path / "cache")]) == 0
    assert len(GraphDataset(tmp_path / "cache")) == 4
    skipped = json.loads((tmp_path / "cache" / "skipped.json").read_text())
    assert [s["frame_id"] for s in skipped] == ["f-1"]
    assert skipped[0]["reason"].startswith(f"{path}: ASE cannot read frame 1 (f-1): ")
