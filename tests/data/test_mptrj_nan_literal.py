"""MPtrj JSON with NaN or Infinity literals (what Python's json.dump writes by default), which
ijson cannot read: every material is still read, from the one ijson stopped in on by Python's
decoder, and the frame with the non-finite label is refused by the frame checks (reported,
not dropped); before, the whole file was refused."""

from __future__ import annotations

import gzip
import json
import re
import zlib

import pytest

from fastchgnet.data.frame import check_frame
from fastchgnet.data.sources import mptrj, read_mptrj
from fastchgnet.errors import StructureError
from tests.data.frames import mptrj_record, rock_salt, write_mptrj


@pytest.mark.parametrize(("compressed", "chunk"), [(False, 1 << 20), (True, 1 << 20), (False, 7)])
def test_a_nan_literal_is_one_bad_frame_and_the_rest_are_read(
    tmp_path, monkeypatch, compressed, chunk
):
    monkeypatch.setattr(mptrj, "READ_CHARS", chunk)  # 7: tokens cut at every read
    bad = mptrj_record(rock_salt(1), seed=1)
    bad["force"][0][0] = float("nan")
    worse = mptrj_record(rock_salt(2), seed=2)
    worse["corrected_total_energy"] = float("-inf")
    materials = {
        "mp-1": {"a": mptrj_record(rock_salt(0), seed=0)},
        "mp-2": {"b": bad, "c": mptrj_record(rock_salt(3), seed=3)},
        "mp-3": {"d": worse, "e": mptrj_record(rock_salt(4), seed=4)},
    }
    path = write_mptrj(tmp_path / "nan.json", materials)
    if compressed:
        gz = tmp_path / "nan.json.gz"
        gz.write_bytes(gzip.compress(path.read_bytes()))
        path = gz
    frames = list(read_mptrj(path))
    assert [(f.material_id, f.frame_id) for f in frames] == [
        ("mp-1", "a"), ("mp-2", "b"), ("mp-2", "c"), ("mp-3", "d"), ("mp-3", "e"),
    ]  # fmt: skip
    refused = []
    for frame in frames:
        try:
            check_frame(frame)
        except StructureError as error:
            refused.append((frame.frame_id, str(error)))
    assert [frame_id for frame_id, _ in refused] == ["b", "d"]
    assert "non-finite" in refused[0][1] or "finite" in refused[0][1]


def _cut_off(path, text: str, compressed: bool):
    """``text`` into ``path``, or gzipped as a download cut off after it (every byte of
    ``text`` decompresses, then gzip's EOFError)."""
    if not compressed:
        path.write_text(text)
        return path
    packer = zlib.compressobj(wbits=31)  # 31: a gzip header
    path.write_bytes(packer.compress(text.encode()) + packer.flush(zlib.Z_SYNC_FLUSH))
    return path


@pytest.mark.parametrize("compressed", [False, True], ids=["json", "json.gz"])
def test_a_file_that_breaks_off_after_a_nan_keeps_what_is_before_and_reports_the_break(
    tmp_path, compressed
):
    """Python's decoder takes over at the NaN and finds the break: the complete materials
    before it are read (from a .json.gz too: it reads as far as is decompressed) and the
    break is one bad entry (was a ValueError losing them; a traceback from a .json.gz); with
    no complete material before it, the file is refused."""
    bad = mptrj_record(rock_salt(1), seed=1)
    bad["force"][0][0] = float("nan")
    materials = {"mp-1": {"a": bad}, "mp-2": {"b": mptrj_record(rock_salt(2), seed=2)},
                 "mp-3": {"c": bad}}  # fmt: skip
    text = json.dumps(materials)
    name = "cut.json.gz" if compressed else "cut.json"
    path = _cut_off(tmp_path / name, text[:-40], compressed)
    with pytest.warns(UserWarning, match=re.escape(f"{name}: file is not complete JSON after")):
        frames = list(read_mptrj(path))
    ids = [(f.material_id, f.frame_id) for f in frames]
    assert ids == [("mp-1", "a"), ("mp-2", "b"), (name, "")]
    assert frames[2].problem.startswith("file is not complete JSON after material mp-2 (2 frames")
    assert frames[2].problem.endswith("; nothing after it was read")
    path = _cut_off(path, text[: text.index("NaN") + 10], compressed)  # in mp-1, after its NaN
    with pytest.raises(ValueError, match=re.escape(f"{name}: not complete JSON, it breaks before")):
        list(read_mptrj(path))
