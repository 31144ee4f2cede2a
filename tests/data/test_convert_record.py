"""convert records what its frames were read from: a resumed conversion from another source or
with other labels is refused."""

from __future__ import annotations

import json
import re

import pytest

from fastchgnet.cli import main
from fastchgnet.data.cache import CacheError
from fastchgnet.data.convert import convert
from fastchgnet.data.origin import HASH_LIMIT_BYTES, source_identity
from fastchgnet.data.sources import read_frames
from tests.data.frames import mptrj_record, rock_salt, write_mptrj

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
