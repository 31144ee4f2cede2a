"""A conversion that fails before its first shard is finished (a source with no readable
frame) leaves nothing half-made: the folder it made is gone, a folder that was there before
(a user's, a cache being extended) stays with only what it held. Before, the folder was left
holding only settings.json, which a later run then took for a started conversion. A
conversion that fails after finishing a shard keeps it (and its settings.json), to resume.
``data convert -o new/a/cache`` makes the cache's missing parents first: a failed or stopped
command left ``new/a`` behind, empty; now it removes them where they are left empty."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

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


def _stopped_after(frames: list[Frame]):
    """A stand-in for ``data.convert.convert`` that converts ``frames`` (2 a shard) and is
    stopped by Ctrl-C once they are read, as ``data convert`` meets it."""

    def stopped(source, out, *args, **kwargs):
        source.close()

        def then_ctrl_c():
            yield from frames
            raise KeyboardInterrupt

        return convert(then_ctrl_c(), out, workers=1, shard_size=2, progress=False)

    return stopped


def test_a_failed_command_removes_the_parent_folders_it_made(tmp_path, capsys):
    out = tmp_path / "new" / "a" / "cache"
    assert main(["data", "convert", str(_garbage(tmp_path)), "-o", str(out)]) == 1
    assert "cannot read frame 0" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()  # a folder that was there stays, empty as it was
    out = tmp_path / "mine" / "a" / "cache"
    assert main(["data", "convert", str(_garbage(tmp_path)), "-o", str(out)]) == 1
    assert (tmp_path / "mine").is_dir()
    assert not list((tmp_path / "mine").iterdir())


def test_a_stopped_command_removes_the_parent_folders_it_left_empty(tmp_path, monkeypatch):
    from fastchgnet.data import convert as conversion

    source, out = _garbage(tmp_path), tmp_path / "new" / "a" / "cache"
    monkeypatch.setattr(conversion, "convert", _stopped_after([]))
    assert main(["data", "convert", str(source), "-o", str(out)]) == 130
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(conversion, "convert", _stopped_after(_good(3)))  # a shard finished
    assert main(["data", "convert", str(source), "-o", str(out)]) == 130
    assert (out / "shard-00000" / "shard.json").is_file()  # kept, to continue


def test_a_converted_cache_keeps_the_parent_folders_made_for_it(tmp_path):
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    atoms = bulk("Si", "diamond", a=5.43)
    atoms.calc = SinglePointCalculator(atoms, energy=-10.8, forces=[[0.0] * 3] * 2)
    write(tmp_path / "si.extxyz", [atoms])
    out = tmp_path / "new" / "a" / "cache"
    assert main(["data", "convert", str(tmp_path / "si.extxyz"), "-o", str(out)]) == 0
    assert (out / "manifest.json").is_file()


def test_the_folders_made_are_those_the_path_names_after_dot_dot(tmp_path, monkeypatch):
    """``x/../new/cache`` with ``new`` there before and ``x`` not: ``x/../new`` was taken for
    missing (``Path.absolute`` keeps ".."), so a failure removed the user's empty ``new`` and
    left ``x``, which mkdir had made on the way."""
    from fastchgnet.data.folder_lock import made_folders

    monkeypatch.chdir(tmp_path)
    (tmp_path / "new").mkdir()
    made = []

    def failed_conversion() -> None:
        with made_folders(Path("x/../new/cache"), keep_empty=False):
            made.append((tmp_path / "new" / "cache").is_dir())
            raise RuntimeError("the conversion failed")

    with pytest.raises(RuntimeError):
        failed_conversion()
    assert made == [True]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]
    assert list((tmp_path / "new").iterdir()) == []
