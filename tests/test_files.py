"""The atomic writer: the old file or the new one, with the mode a plain open would give."""

from __future__ import annotations

import os

import pytest

from fastchgnet.files import atomic_open, atomic_write_bytes, process_umask


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_an_atomic_file_gets_the_mode_open_would_give_it(tmp_path, umask):
    previous = os.umask(umask)
    try:
        assert process_umask() == umask
        atomic_write_bytes(tmp_path / "atomic", b"x")
        with open(tmp_path / "plain", "wb") as handle:
            handle.write(b"x")
    finally:
        os.umask(previous)
    mode = (tmp_path / "atomic").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "kept"
    atomic_write_bytes(path, b"old")

    def killed() -> None:
        with atomic_open(path) as handle:
            handle.write(b"new")
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        killed()
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


def test_json_files_are_standard_json_with_nan_as_null(tmp_path):
    # json.dumps wrote bare NaN (summary.json's R² of a one-structure split): not JSON
    import json
    import math

    from fastchgnet.files import write_json_atomic

    path = tmp_path / "summary.json"
    write_json_atomic(path, {"val": {"e_r2": math.nan, "e_mae": 0.5}, "xs": [math.inf, 1.0]})
    text = path.read_text()
    assert "NaN" not in text
    assert "Infinity" not in text
    assert json.loads(text) == {"val": {"e_r2": None, "e_mae": 0.5}, "xs": [None, 1.0]}
