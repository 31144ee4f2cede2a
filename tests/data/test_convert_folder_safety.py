"""What ``convert`` does to a folder that already holds things: shards of other frames are not
kept, the user's own files stay, a corrupt shard.json is rebuilt, a corrupt settings.json or
manifest.json is one line naming it, a file given as the folder and a second live conversion
are refused in one line. Before, a second ``convert`` of other in-memory frames kept the first
one's full shards (the cache mixed two data sets), ``shard-notes.txt`` and ``.tmp-mine/`` were
deleted, a garbled shard.json or settings.json blocked every rerun with an error naming no
file (after manifest.json was deleted), a truncated manifest.json was a JSONDecodeError
traceback, ``-o FILE`` a FileExistsError traceback, and a second conversion deleted the first
one's temporary shard."""

from __future__ import annotations

import json

import pytest

from fastchgnet.cli import main
from fastchgnet.data.cache import CacheError, GraphDataset
from fastchgnet.data.convert import LOCK_FILE, convert
from fastchgnet.data.folder_lock import folder_lock
from fastchgnet.data.sources import from_structures
from tests.data.frames import mptrj_record, rock_salt, write_mptrj


def _frames(n, first=0):
    structures = [rock_salt(k, 5.4 + 0.02 * k) for k in range(first, first + n)]
    return from_structures(structures, energies=[-3.0 - 0.1 * k for k in range(n)])


def _convert(frames, out):
    return convert(frames, out, workers=1, shard_size=2, progress=False)


def test_shards_of_other_frames_are_not_kept(tmp_path):
    out = tmp_path / "c"
    _convert(_frames(4), out)
    with pytest.raises(CacheError, match="built from other frames than these"):
        _convert(_frames(5, first=10), out)
    assert _convert(_frames(4), tmp_path / "again").shards_built == 2
    assert _convert(_frames(4), tmp_path / "again").shards_kept == 2  # the same frames: kept


def test_the_users_own_files_in_the_folder_stay(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    mine = [out / "shard-notes.txt", out / ".tmp-mine", out / "shard-extra"]
    mine[0].write_text("my notes")
    mine[1].mkdir()
    mine[2].mkdir()
    _convert(_frames(5), out)
    assert _convert(_frames(5), out).shards_kept == 2
    assert all(path.exists() for path in mine)
    assert len(GraphDataset(out)) == 5


def test_a_garbled_shard_json_is_rebuilt(tmp_path):
    out = tmp_path / "c"
    _convert(_frames(4), out)
    (out / "shard-00000" / "shard.json").write_text('{"n_frames": 2}\n}extra')
    summary = _convert(_frames(4), out)
    assert (summary.shards_built, summary.shards_kept) == (1, 1)
    assert len(GraphDataset(out)) == 4


def test_a_garbled_settings_json_is_one_line_naming_it(tmp_path):
    out = tmp_path / "c"
    _convert(_frames(4), out)
    (out / "settings.json").write_text('{"format": 2}\n}extra')
    with pytest.raises(CacheError, match=r"settings\.json: unreadable \(") as refusal:
        _convert(_frames(4), out)
    assert "\n" not in str(refusal.value)
    assert (out / "manifest.json").is_file()  # the finished cache is still usable


def test_a_damaged_settings_json_with_no_shards_takes_the_new_settings(tmp_path):
    """It was refused although nothing depended on it (the module says a folder with no
    finished shard takes the new settings); one that holds no object is one line too."""
    out = tmp_path / "c"
    out.mkdir()
    (out / "settings.json").write_text("{torn")
    assert _convert(_frames(2), out).shards_built == 1
    (out / "settings.json").write_text("[]")
    with pytest.raises(CacheError, match=r"settings\.json: holds list, not a record"):
        _convert(_frames(2), out)


def test_a_truncated_manifest_is_one_line_naming_it(tmp_path):
    out = tmp_path / "c"
    _convert(_frames(2), out)
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    with pytest.raises(CacheError, match=r"manifest\.json: unreadable \("):
        GraphDataset(out)


def test_a_file_as_the_cache_folder_is_one_line(tmp_path, capsys):
    source = write_mptrj(tmp_path / "m.json", {"mp-1": {"f": mptrj_record(rock_salt(), 0)}})
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    assert main(["data", "convert", str(source), "-o", str(taken), "--workers", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "taken: is a file; a graph cache is a folder" in err
    assert "\n" not in err


def test_a_second_live_conversion_is_refused(tmp_path):
    out = tmp_path / "c"
    with folder_lock(out, LOCK_FILE, "held by {holder}"):  # as a conversion at work holds it
        (out / ".tmp-shard-00000").mkdir()
        with pytest.raises(ValueError, match="a conversion is going on there") as refusal:
            _convert(_frames(2), out)
        assert (out / ".tmp-shard-00000").is_dir()
    assert "pid " in str(refusal.value)
    assert _convert(_frames(2), out).n_structures == 2
    assert json.loads((out / "manifest.json").read_text())["n_structures"] == 2
