"""MPtrj JSON with NaN literals (Python's json.dump default) is refused in one line naming the
material and the cure, not as an unexplained lexical error."""

from __future__ import annotations

import pytest

from fastchgnet.data.sources import read_mptrj
from tests.data.frames import mptrj_record, rock_salt, write_mptrj


def test_a_nan_literal_is_named_with_its_material_and_the_cure(tmp_path):
    bad = mptrj_record(rock_salt(1), seed=1)
    bad["force"][0][0] = float("nan")
    materials = {"mp-1": {"a": mptrj_record(rock_salt(0), seed=0)}, "mp-2": {"b": bad}}
    path = write_mptrj(tmp_path / "nan.json", materials)
    with pytest.raises(ValueError, match=r"nan\.json: NaN/Infinity literal \(not standard JSON\) "
                       r"in material mp-2: write the file with allow_nan=False"):  # fmt: skip
        list(read_mptrj(path))
