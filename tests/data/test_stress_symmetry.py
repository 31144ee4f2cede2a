"""A stress label whose off-diagonal pairs differ (xy != yx by far more than round-off) is
physically wrong data (a Cauchy stress is symmetric; a Voigt order misread as a flat 3x3
makes one): ingest skips its frame and reports it with the largest asymmetry in GPa, as every
other bad frame. Before, such a label was taken silently and trained on. Round-off of a
VASP stress (kBar with a few decimals, x -0.1 to GPa) is taken, as are the real VASP runs and
the bundled quickstart data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fastchgnet.data.convert import convert
from fastchgnet.data.frame import Frame, check_frame, stress_asymmetry
from fastchgnet.data.sources import read_frames
from fastchgnet.data.stats import dataset_stats
from fastchgnet.errors import StructureError
from tests.data.frames import mptrj_record, rock_salt, write_mptrj
from tests.data.test_sources import reference_run

QUICKSTART = Path(__file__).parents[2] / "fastchgnet" / "resources" / "quickstart.extxyz.gz"


def _shear(xy: float, yx: float, diagonal: float = 0.0) -> np.ndarray:
    stress = np.eye(3) * diagonal
    stress[0, 1], stress[1, 0] = xy, yx
    return stress


def test_an_asymmetric_stress_skips_its_frame_with_the_asymmetry_in_gpa(tmp_path):
    records = {str(k): mptrj_record(rock_salt(k, 5.4 + 0.05 * k), seed=k) for k in range(3)}
    records["1"]["stress"] = _shear(50.0, -50.0, diagonal=20.0).tolist()  # kBar: 10 GPa apart
    source = write_mptrj(tmp_path / "mptrj.json", {"mp-1": records})
    summary = convert(read_frames(source), tmp_path / "c", workers=1, progress=False)
    assert (summary.n_structures, summary.n_skipped) == (2, 1)
    [skip] = json.loads((tmp_path / "c" / "skipped.json").read_text())
    assert skip["frame_id"] == "1"
    assert skip["reason"].startswith("stress is not symmetric: xy and yx differ by 10 GPa")
    assert "\n" not in skip["reason"]
    [unusable] = dataset_stats(read_frames(source))["unusable"]
    assert unusable.startswith("frame 1 of mp-1")
    assert "not symmetric" in unusable


def test_check_frame_names_the_frame_and_the_asymmetry():
    frame = Frame(rock_salt(), stress=_shear(1.0, 0.5), material_id="mp-7", frame_id="f3")
    with pytest.raises(StructureError, match=r"frame f3 of mp-7 .*xy and yx differ by 0\.5 GPa"):
        check_frame(frame)


@pytest.mark.parametrize(
    ("stress", "why"),
    [
        (_shear(1.0, 1.0 + 1e-3, diagonal=-5.0), "1e-3 GPa: kBar round-off x 0.1"),
        (_shear(1.0, 1.009, diagonal=2.0), "below 0.01 GPa"),
        (_shear(30.0, 30.04, diagonal=500.0), "0.04 GPa at 500 GPa: relative 8e-5"),
    ],
)
def test_round_off_asymmetry_is_taken(stress, why):
    assert stress_asymmetry(stress) is None, why
    check_frame(Frame(rock_salt(), stress=stress))


@pytest.mark.parametrize("limit", [(0.02, 1.0), (0.1, 500.0)])
def test_asymmetry_beyond_the_tolerance_is_refused(limit):
    difference, diagonal = limit
    assert "not symmetric" in stress_asymmetry(_shear(1.0, 1.0 + difference, diagonal))


@pytest.mark.parametrize("run", ["parse-vasp-no-magmoms", "parse-vasp-with-magmoms"])
def test_the_real_vasp_runs_pass(run):
    stresses = [f.stress for f in read_frames(reference_run(run)) if f.stress is not None]
    assert stresses
    assert all(stress_asymmetry(stress) is None for stress in stresses)


def test_the_bundled_quickstart_data_passes():
    checked = 0
    for frame in read_frames(QUICKSTART):
        if frame.stress is not None:
            assert stress_asymmetry(frame.stress) is None, frame.name
            checked += 1
    assert checked > 1000
