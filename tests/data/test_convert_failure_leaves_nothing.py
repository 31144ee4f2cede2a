"""A conversion that fails before its first shard is finished (a source with no readable
frame) leaves nothing half-made: the folder it made is gone, a folder that was there before
(a user's, a cache being extended) stays with only what it held. Before, the folder was left
holding only settings.json, which a later run then took for a started conversion. A
conversion that fails after finishing a shard keeps it (and its settings.json), to resume."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from fastchgnet.cli import main
from fastchgnet.data.convert import convert
from fastchgnet.data.frame import Frame
from fastchgnet.data.sources import from_structures, read_frames
from tests.data.frames import rock_salt


def _garbage(tmp_path):
    source = tmp_path / "bad.extxyz"
    source.write_text("garbage\nnot an xyz file\n")
    return source


def _good(n: int) -> list[Frame]:
    structures = [rock_salt(k, 5.4 + 0.02 * k) for k in range(n)]
    return list(from_structures(structures, energies=[-3.0] * n))


def _breaking_off(frames: list[Frame]) -> Iterator[Frame]:
    yield from frames
    raise ValueError("source breaks off")


def test_a_source_with_no_readable_frame_leaves_no_folder(tmp_path):
    out = tmp_path / "made" / "here" / "cache"
    with pytest.raises(ValueError, match="cannot read frame 0"):
        convert(read_frames(_garbage(tmp_path)), out, workers=1, progress=False)
    assert not (tmp_path / "made").exists()  # nor the parents it made


def test_the_command_line_leaves_no_cache_folder(tmp_path, capsys):
    out = tmp_path / "cache"
    assert main(["data", "convert", str(_garbage(tmp_path)), "-o", str(out)]) != 0
    assert "cannot read frame 0" in capsys.readouterr().err
    assert not out.exists()


def test_a_users_folder_keeps_only_what_it_held(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="cannot read frame 0"):
        convert(read_frames(_garbage(tmp_path)), out, workers=1, progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    out.joinpath("notes.txt").unlink()
    with pytest.raises(ValueError, match="breaks off"):
        convert(_breaking_off([]), out, workers=1, progress=False)
    assert out.is_dir()  # empty, but it was there before
    assert not list(out.iterdir())


def test_a_cache_being_extended_keeps_its_shards(tmp_path):
    out = tmp_path / "cache"
    convert(_good(2), out, workers=1, shard_size=2, progress=False)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match="breaks off"):
        convert(_breaking_off(_good(2)), out, workers=1, shard_size=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(set(before) - {"manifest.json"})
    assert (out / "shard-00000" / "shard.json").is_file()


def test_a_failure_after_a_finished_shard_keeps_it_to_resume(tmp_path):
    out = tmp_path / "cache"
    with pytest.raises(ValueError, match="breaks off"):
        convert(_breaking_off(_good(3)), out, workers=1, shard_size=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["settings.json", "shard-00000"]
    assert json.loads((out / "settings.json").read_text())["shard_size"] == 2
    summary = convert(_good(3), out, workers=1, shard_size=2, progress=False)
    assert (summary.shards_kept, summary.shards_built, summary.n_structures) == (1, 1, 3)


def test_a_source_with_no_frames_at_all_is_an_empty_cache(tmp_path):
    """Not a failure: an empty source makes an empty, finished cache (as before)."""
    out = tmp_path / "cache"
    assert convert([], out, workers=1, progress=False).n_structures == 0
    assert {p.name for p in out.iterdir()} == {"settings.json", "skipped.json", "manifest.json"}
