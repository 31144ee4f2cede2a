"""Which files a VASP source reads: a named vasprun file is the one read (with its own OUTCAR),
a folder of several vasprun files is refused naming them, a folder or .zip of several runs is
read run by run, and a relative path has its folder's name. Before, a named
vasprun.xml.relax2 read vasprun.xml.relax1 (the folder's first), a zip of two runs gave the
first run alone, and ``read_vasp("vasprun.xml")`` an empty material id."""

from __future__ import annotations

import shutil
import warnings
import zipfile

import pytest

from fastchgnet.data.sources import vasp
from tests.data.test_sources import reference_run

RUN = "parse-vasp-no-magmoms"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The reference run (49 ionic steps, no magnetic moments), unpacked."""
    root = tmp_path_factory.mktemp("vasp")
    with zipfile.ZipFile(reference_run(RUN)) as archive:
        archive.extractall(root)
    return root / RUN


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen's on the reference files
        return list(vasp.read_vasp(path))


def test_a_named_vasprun_file_is_the_file_read(run_dir, tmp_path):
    folder = tmp_path / "relaxations"
    folder.mkdir()
    (folder / "vasprun.xml.relax1").write_text("<modeling>not this run</modeling>")
    shutil.copy(run_dir / "vasprun.xml", folder / "vasprun.xml.relax2")
    frames = _read(folder / "vasprun.xml.relax2")
    assert len(frames) == 49
    assert frames[0].material_id == "relaxations"


def test_a_folder_of_several_vasprun_files_is_refused_naming_them(tmp_path):
    for name in ("vasprun.xml.relax1", "vasprun.xml.relax2"):
        (tmp_path / name).write_text("")
    with pytest.raises(ValueError, match="2 vasprun files") as refusal:
        list(vasp.read_vasp(tmp_path))
    assert "vasprun.xml.relax1, vasprun.xml.relax2" in str(refusal.value)
    assert "\n" not in str(refusal.value)


@pytest.mark.parametrize(
    ("files", "named", "expected"),
    [
        (["OUTCAR.relax1", "OUTCAR.relax2"], "vasprun.xml.relax2", "OUTCAR.relax2"),
        (["OUTCAR.relax1.gz"], "vasprun.xml.relax1", "OUTCAR.relax1.gz"),
        (["OUTCAR.gz"], "vasprun.xml", "OUTCAR.gz"),
        (["OUTCAR"], "vasprun.xml.relax2", None),  # another run's (two vasprun files here)
    ],
)
def test_a_vasprun_file_takes_the_outcar_of_its_own_name(tmp_path, files, named, expected):
    for name in [*files, "vasprun.xml.relax1", "vasprun.xml.relax2", "vasprun.xml"]:
        (tmp_path / name).write_text("")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no OUTCAR of its name"
        found = vasp.outcar_of(tmp_path / named)
    assert (found.name if found else None) == expected


def test_two_outcars_of_one_run_are_refused(tmp_path):
    for name in ("vasprun.xml", "OUTCAR", "OUTCAR.gz"):
        (tmp_path / name).write_text("")
    with pytest.raises(ValueError, match=r"OUTCAR and OUTCAR\.gz both beside it"):
        vasp.outcar_of(tmp_path / "vasprun.xml")


def test_a_zip_of_several_runs_reads_every_run(run_dir, tmp_path):
    archive = tmp_path / "runs.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for run in ("a_first", "b_second"):
            handle.write(run_dir / "vasprun.xml", f"{run}/vasprun.xml")
    frames = _read(archive)
    assert len(frames) == 2 * 49
    assert [frames[0].material_id, frames[-1].material_id] == ["runs/a_first", "runs/b_second"]
    assert len({frame.frame_id for frame in frames}) == len(frames)


def test_a_relative_path_has_its_folders_name(run_dir, monkeypatch):
    monkeypatch.chdir(run_dir)
    assert _read("vasprun.xml")[0].material_id == RUN
    assert _read(".")[0].material_id == RUN
