"""Output files of the commands: nothing that is not a regular file is replaced, a file another
run wrote meanwhile is kept (this run's results go beside it), and names may hold "@"."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from ase.io import write
from pymatgen.core import Lattice, Structure

from fastchgnet.cli import main
from fastchgnet.files import atomic_write_bytes, put_new
from fastchgnet.md.calculator import as_atoms

ROCKSALT = Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


@pytest.mark.parametrize("kind", ["fifo", "link to a device", "dangling link"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_that_is_not_a_regular_file_is_refused_and_left(
    tmp_path, capsys, kind, overwrite
):
    # a FIFO, a link to /dev/null (and, as root, /dev/full itself) were replaced by the JSON
    source, out = tmp_path / "a.cif", tmp_path / "out.json"
    ROCKSALT.to(filename=str(source))
    if kind == "fifo":
        os.mkfifo(out)
    else:
        out.symlink_to("/dev/null" if kind == "link to a device" else tmp_path / "gone")
    args = ["predict", str(source), "-o", str(out)] + ["--overwrite"] * overwrite
    assert main(args) == 1
    assert "is there and is not a regular file" in one_line_error(capsys)
    assert out.is_symlink() if "link" in kind else out.is_fifo()


def test_a_file_another_process_wrote_meanwhile_is_kept_and_this_ones_goes_beside(tmp_path):
    # two runs into one -o both exited 0 and the file held only the second's results
    path, tmp = tmp_path / "race.json", tmp_path / ".race.json.tmp"
    tmp.write_text("this run")
    path.write_text("the other run")  # written while this run went on
    with pytest.raises(FileExistsError, match=r"race\.json: another process wrote it"):
        put_new(tmp, path)
    kept = tmp_path / f"race.{os.getpid()}.json"
    assert (path.read_text(), kept.read_text()) == ("the other run", "this run")
    assert not tmp.exists()
    fresh = tmp_path / "fresh.json"
    atomic_write_bytes(fresh, b"mine", new=True)  # a free name: written as before
    assert fresh.read_bytes() == b"mine"
    assert len(list(tmp_path.iterdir())) == 3  # no temp file left


def test_predict_reads_an_ase_file_whose_name_holds_an_at_sign(tmp_path, model):
    # ASE split "x@1.extxyz" into the file "x" and the index "1.extxyz"
    source, out = tmp_path / "x@1.extxyz", tmp_path / "out.json"
    write(str(source), [as_atoms(ROCKSALT)])
    assert main(["predict", str(source), "-o", str(out)]) == 0
    assert [r["name"] for r in json.loads(out.read_text())] == [f"{Path(source).name}[0]"]


def test_predict_over_several_files_skips_one_it_cannot_read_and_names_it(tmp_path, capsys, model):
    # one empty file among several wrote nothing at all
    good, empty, out = tmp_path / "a.cif", tmp_path / "empty.cif", tmp_path / "out.json"
    ROCKSALT.to(filename=str(good))
    empty.write_text("")
    assert main(["predict", str(empty), str(good), "-o", str(out)]) == 1
    assert [r["name"] for r in json.loads(out.read_text())] == ["a.cif"]
    err = capsys.readouterr().err
    assert f"fastchgnet predict: skipped file {empty}" in err
    out.unlink()
    assert main(["predict", str(empty), str(tmp_path / "missing.cif"), "-o", str(out)]) == 1
    assert "none of the 2 files can be read (the first: " in capsys.readouterr().err
    assert not out.exists()


def test_a_compressed_output_kept_beside_another_runs_file_stays_readable(tmp_path):
    # out.extxyz.gz was kept as out.extxyz.<pid>.gz, a name ASE finds no format in
    from ase.build import bulk
    from ase.io import read

    from fastchgnet.files import write_frames_atomic

    path = tmp_path / "out.extxyz.gz"
    path.write_bytes(b"the other run's")
    with pytest.raises(FileExistsError, match=f"out.{os.getpid()}.extxyz.gz"):
        write_frames_atomic(path, [bulk("Cu")], new=True)
    (kept,) = read(tmp_path / f"out.{os.getpid()}.extxyz.gz", index=":")
    assert kept.get_chemical_symbols() == ["Cu"]
