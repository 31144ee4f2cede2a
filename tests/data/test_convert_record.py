"""convert records what its frames were read from (a resumed conversion from another source or
with other labels is refused) and stops reading at max_structures."""

from __future__ import annotations

import json
import re

import pytest

from fastchgnet.cli import main
from fastchgnet.data.cache import CacheError, GraphDataset
from fastchgnet.data.convert import convert
from fastchgnet.data.frame import Frame
from fastchgnet.data.origin import HASH_LIMIT_BYTES, source_identity
from fastchgnet.data.sources import from_structures, read_frames
from tests.data.frames import isolated_atom, mptrj_record, rock_salt, write_mptrj

LABELS = '{"stress_unit": "GPa", "stress_sign": "%s"}'


def mptrj_file(path, n):
    records = {"mp-1": {f"mp-1-{k}": mptrj_record(rock_salt(k), k) for k in range(n)}}
    return write_mptrj(path, records)


def test_convert_resume_refuses_other_labels_or_another_source(tmp_path, capsys):
    from ase.io import write

    from fastchgnet.md.calculator import as_atoms

    images = [as_atoms(rock_salt(k)) for k in range(4)]
    write(str(tmp_path / "a.extxyz"), images)
    write(str(tmp_path / "b.extxyz"), images[::-1])
    args = ["data", "convert", "-o", str(tmp_path / "c"), "--workers", "1", "--shard-size", "2"]
    assert main([*args, str(tmp_path / "a.extxyz"), "--labels", LABELS % "ase"]) == 0
    capsys.readouterr()
    assert main([*args, str(tmp_path / "a.extxyz"), "--labels", LABELS % "vasp"]) == 1
    refused = capsys.readouterr().err.strip().splitlines()[-1]
    assert "labels.stress_sign: 'ase' in the cache, 'vasp' now" in refused
    assert refused.startswith("fastchgnet data convert: error:")  # one line
    assert main([*args, str(tmp_path / "b.extxyz"), "--labels", LABELS % "ase"]) == 1
    moved = r"origin\.path: '.*a\.extxyz' in the cache, '.*b\.extxyz' now"
    assert re.search(moved, capsys.readouterr().err)
    assert main([*args, str(tmp_path / "a.extxyz"), "--labels", LABELS % "ase"]) == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["origin"]["labels"]["stress_sign"] == "ase"


def test_an_mptrj_source_records_its_energy_key(tmp_path):
    path = mptrj_file(tmp_path / "m.json", 3)
    base = ["data", "convert", str(path), "-o", str(tmp_path / "c"), "--workers", "1"]
    assert main([*base, "--shard-size", "1"]) == 0
    with pytest.raises(CacheError, match=r"origin\.energy_key: 'corrected_total_energy'"):
        convert(read_frames(path, "energy_per_atom"), tmp_path / "c", shard_size=1)


def test_large_files_are_named_by_size_and_time_small_ones_by_content(tmp_path, monkeypatch):
    path = mptrj_file(tmp_path / "m.json", 1)
    small = source_identity(path)
    assert set(small) == {"path", "size", "sha256"}
    monkeypatch.setattr("fastchgnet.data.origin.HASH_LIMIT_BYTES", small["size"] - 1)
    assert set(source_identity(path)) == {"path", "size", "mtime_ns"}
    assert HASH_LIMIT_BYTES >= 1 << 20


def counted(frames, seen):
    for frame in frames:
        seen.append(frame.frame_id)
        yield frame


def test_convert_stops_reading_once_max_structures_are_kept(tmp_path):
    structures = [rock_salt(k) for k in range(10)]
    structures[1] = isolated_atom()  # skipped: one more frame is read in its place
    frames: list[Frame] = list(from_structures(structures, energies=[-1.0] * 10))
    seen: list[str] = []
    convert(counted(frames, seen), tmp_path / "c", workers=1, progress=False, max_structures=3)
    assert len(seen) == 4
    dataset = GraphDataset(tmp_path / "c")
    assert list(dataset.frame_ids) == [frames[k].frame_id for k in (0, 2, 3)]
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["max_structures"] == 3
    convert(frames, tmp_path / "all", workers=1, progress=False, max_structures=50)
    manifest = json.loads((tmp_path / "all" / "manifest.json").read_text())
    assert manifest["max_structures"] == 0  # the source ended first: the cache holds it all


def test_max_structures_across_shards_keeps_full_shards_on_resume(tmp_path):
    frames = list(from_structures([rock_salt(k) for k in range(7)], energies=[-1.0] * 7))
    seen: list[str] = []
    cache = tmp_path / "c"
    convert(counted(frames, seen), cache, workers=1, shard_size=2, progress=False, max_structures=3)
    assert len(seen) == 3
    assert len(GraphDataset(cache)) == 3
    summary = convert(frames, cache, workers=1, shard_size=2, progress=False)
    assert (summary.shards_kept, summary.shards_built, summary.n_structures) == (1, 3, 7)
