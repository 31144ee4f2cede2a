"""What predict, relax and md read from files of several frames: every ionic step of a VASP run."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from fastchgnet.cli import main
from fastchgnet.cli.inputs import read_structures, structure_label
from tests.conftest import REFERENCE_DATA


@pytest.fixture(scope="module")
def vasp_run(tmp_path_factory):
    """The folder of a 49-step VASP relaxation (vasprun.xml, XDATCAR, OUTCAR)."""
    archive = REFERENCE_DATA / "parse-vasp-no-magmoms.zip"
    if not archive.is_file():
        pytest.skip(f"reference data not found at {archive}")
    folder = tmp_path_factory.mktemp("vasp")
    with zipfile.ZipFile(archive) as files:
        files.extractall(folder)
    return folder / "parse-vasp-no-magmoms"


def test_a_vasprun_gives_every_ionic_step_named_by_its_index(vasp_run):
    from ase.io import read

    steps = read_structures([str(vasp_run / "vasprun.xml")])
    xdatcar = read(vasp_run / "XDATCAR", ":")
    assert len(steps) == len(xdatcar) == 49
    assert [structure_label(s) for s in steps[:2]] == ["vasprun.xml[0]", "vasprun.xml[1]"]
    for step, frame in zip(steps, xdatcar, strict=True):
        np.testing.assert_allclose(step.positions, frame.positions, atol=1e-5)
    assert len(read_structures([str(vasp_run / "OUTCAR")])) == 49


def test_file_at_index_of_a_vasprun_selects_that_ionic_step(vasp_run):
    path = str(vasp_run / "vasprun.xml")
    first = read_structures([f"{path}@0"])
    assert [structure_label(s) for s in first] == ["vasprun.xml[0]"]
    assert not np.allclose(first[0].positions, read_structures([f"{path}@-1"])[0].positions)
    some = read_structures([f"{path}@5:8"])
    assert [structure_label(s) for s in some] == [f"vasprun.xml[{k}]" for k in (5, 6, 7)]


def test_predict_of_a_vasprun_at_zero_is_its_first_step(vasp_run, tmp_path, model):
    from ase.io import read

    out = tmp_path / "p.json"
    assert main(["predict", f"{vasp_run / 'vasprun.xml'}@0", "-o", str(out)]) == 0
    (record,) = json.loads(out.read_text())
    assert record["name"] == "vasprun.xml[0]"
    first, last = model.predict_structure(read(vasp_run / "XDATCAR", ":")[0:49:48])
    assert record["energy_per_atom_eV"] == pytest.approx(float(first["e"]), abs=1e-5)
    assert record["energy_per_atom_eV"] != pytest.approx(float(last["e"]), abs=1e-4)


def test_an_archive_of_vasp_runs_points_to_the_files_in_it_and_to_data_convert(tmp_path):
    # it said "cannot read a structure (zip)", while data convert reads the same archive
    archive = tmp_path / "runs.zip"
    with zipfile.ZipFile(archive, "w") as files:
        files.writestr("run/vasprun.xml", "<modeling></modeling>")
    with pytest.raises(ValueError, match="an archive, not a structure file") as refused:
        read_structures([str(archive)])
    assert "fastchgnet data convert" in str(refused.value)
