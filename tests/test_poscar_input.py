"""A malformed POSCAR is refused in one line naming the file and the line, before pymatgen
(or ASE) reads it wrong or fails on a numpy broadcast; the valid variants still read."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from fastchgnet.cli import main
from fastchgnet.cli.inputs import read_structures
from tests.conftest import REFERENCE_DATA

CELL = ["3.6 0 0", "0 3.6 0", "0 0 3.6"]
POSITIONS = ["0 0 0", "0.5 0.5 0", "0.5 0 0.5", "0 0.5 0.5"]
SPECIES = ["Cu", "Cu", "Au", "Au"]
CUAU = Structure(Lattice.cubic(3.6), SPECIES, [p.split() for p in POSITIONS])


def poscar(tmp_path, name="POSCAR", **lines) -> str:
    """A POSCAR of CuAu (Cu2 Au2 on fcc sites) with ``lines`` in place of its own (None: left
    out) and ``tail`` after the coordinates; its path."""
    parts = {"comment": "CuAu", "scale": "1.0", "cell": "\n".join(CELL), "names": "Cu Au"}
    parts |= {"counts": "2 2", "mode": "Direct", "coordinates": "\n".join(POSITIONS)}
    parts |= {"tail": ""} | lines
    path = tmp_path / name
    path.write_text("\n".join(text for text in parts.values() if text is not None) + "\n")
    return str(path)


def refusal(path: str) -> str:
    """The one-line ValueError ``read_structures`` raises for ``path``."""
    with pytest.raises(ValueError, match=r"^.+: ") as raised:
        read_structures([path])
    assert "\n" not in str(raised.value)
    return str(raised.value)


def test_poscar_with_missing_coordinate_lines_names_the_shortfall(tmp_path):
    path = poscar(tmp_path, coordinates="\n".join(POSITIONS[:3]))
    assert refusal(path) == f"{path}: counts line says 4 atoms, but 3 coordinate lines follow"


def test_poscar_with_more_names_than_counts_is_refused(tmp_path):
    path = poscar(tmp_path, counts="4")  # read as Cu4 before
    assert refusal(path) == f"{path}: 2 element names (Cu Au) but 1 count (4)"


def test_poscar_with_more_counts_than_names_is_refused(tmp_path):
    path = poscar(tmp_path, names="Cu")
    assert refusal(path) == f"{path}: 1 element name (Cu) but 2 counts (2 2)"


def test_poscar_with_more_coordinate_lines_than_counts_is_refused(tmp_path):
    path = poscar(tmp_path, counts="2 1")  # read as Cu2 Au, the last atom dropped, before
    assert refusal(path) == f"{path}: counts line says 3 atoms, but 4 coordinate lines follow"


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        (
            {"coordinates": "0 0 0\n0.5 0.5 0\n0.5 0 abc\n0 0.5 0.5"},
            "line 11 (atom 3) should be three numbers, not '0.5 0 abc'",
        ),
        (
            {"cell": "\n".join(CELL[:2])},
            "line 5 should be lattice vector 3 (three numbers), not 'Cu Au'",
        ),
        (
            {"counts": "2.0 2"},
            "line 7 should be the atom counts (whole numbers, none negative, "
            "not all 0), not '2.0 2'",
        ),
        (
            {"counts": None},
            "line 7 should be the atom counts (whole numbers, none negative, "
            "not all 0), not 'Direct'",
        ),
        (
            {"scale": "0"},
            "the scale on line 2 is 0: give a positive factor (or three), or a "
            "negative number for the cell's volume",
        ),
        ({"scale": "1 -1 1"}, "the scale on line 2 is 1 -1 1"),
        ({"scale": "one"}, "line 2 should be the scale factor (one number, or three), not 'one'"),
        ({"mode": None}, "line 8 should say Direct or Cartesian, not '0 0 0'"),
    ],
)
def test_a_malformed_poscar_line_is_named_with_its_problem(tmp_path, lines, says):
    path = poscar(tmp_path, **lines)
    assert refusal(path).startswith(f"{path}: {says}")


def test_an_empty_poscar_is_called_empty(tmp_path):
    (tmp_path / "CONTCAR").write_text("\n")
    assert refusal(str(tmp_path / "CONTCAR")) == f"{tmp_path / 'CONTCAR'}: the file is empty"


def test_predict_on_a_short_poscar_prints_one_line_naming_the_file(tmp_path, capsys):
    path = poscar(tmp_path, coordinates="\n".join(POSITIONS[:3]))
    assert main(["predict", path]) == 1
    err = capsys.readouterr().err.strip()
    says = f"{path}: counts line says 4 atoms, but 3 coordinate lines follow"
    assert err == f"fastchgnet predict: error: {says}"


def cartesian(positions: list[str]) -> str:
    return "\n".join(" ".join(str(3.6 * float(x)) for x in p.split()) for p in positions)


@pytest.mark.parametrize(
    "lines",
    [
        {
            "mode": "Selective dynamics\nDirect",
            "coordinates": "\n".join(f"{p} T T F" for p in POSITIONS),
        },
        {"mode": "S\nd", "coordinates": "\n".join(f"{p} F F F ! fixed" for p in POSITIONS)},
        {"mode": "Cartesian", "coordinates": cartesian(POSITIONS)},
        {"mode": "K", "coordinates": cartesian(POSITIONS)},
        {"scale": "-46.656", "cell": "1 0 0\n0 1 0\n0 0 1"},  # a volume
        {"scale": "2 2 2", "cell": "1.8 0 0\n0 1.8 0\n0 0 1.8"},  # per axis (ASE reads it)
        {"names": "Cu_pv/1a2b Au/3c4d"},  # VASP 6.4's POTCAR names
        {
            "names": None,
            "coordinates": "\n".join(f"{p} {e}" for p, e in zip(POSITIONS, SPECIES, strict=True)),
        },
        {"coordinates": "\n".join(f"{p}  # atom {i}" for i, p in enumerate(POSITIONS))},
        {"tail": "\n" + "\n".join(["0.01 0 0"] * 4)},  # velocities
        {"tail": "Lattice velocities and vectors\n1\n" + "0 0 0\n" * 3 + "\n".join(CELL)},
    ],
)
def test_valid_poscar_variants_read_to_the_same_structure(tmp_path, lines):
    (structure,) = read_structures([poscar(tmp_path, **lines)])
    symbols = getattr(structure, "get_chemical_symbols", None)
    species = symbols() if symbols else [site.specie.symbol for site in structure]
    cell = structure.cell[:] if symbols else structure.lattice.matrix
    positions = structure.positions if symbols else structure.cart_coords
    assert species == SPECIES
    assert np.allclose(cell, CUAU.lattice.matrix)
    assert np.allclose(positions, CUAU.cart_coords)


def test_a_gzipped_poscar_is_checked_too(tmp_path):
    path = tmp_path / "POSCAR.gz"
    short = Path(poscar(tmp_path, coordinates="\n".join(POSITIONS[:3])))
    path.write_bytes(gzip.compress(short.read_bytes()))
    assert "counts line says 4 atoms, but 3 coordinate lines follow" in refusal(str(path))


def test_the_reference_vasp_runs_poscar_and_contcar_still_read(tmp_path):
    archives = sorted(REFERENCE_DATA.glob("parse-vasp-*.zip"))
    if not archives:
        pytest.skip(f"reference VASP runs not found at {REFERENCE_DATA}")
    for archive in archives:
        with zipfile.ZipFile(archive) as packed:
            for member in packed.namelist():
                if Path(member).name in ("POSCAR", "CONTCAR") and "MACOSX" not in member:
                    packed.extract(member, tmp_path)
    files = sorted(str(path) for path in tmp_path.rglob("*CAR"))  # CONTCAR, POSCAR of each
    assert len(files) == 2 * len(archives)
    formulas = [structure.composition.formula for structure in read_structures(files)]
    assert formulas[::2] == formulas[1::2]  # a run's CONTCAR has its POSCAR's atoms
    assert sorted(formulas[::2]) == ["Li20 Cl20", "Nb16 C8 O8"][: len(archives)]


def test_data_convert_refuses_a_malformed_poscar_in_one_line(tmp_path, capsys):
    path = poscar(tmp_path, counts="4")
    assert main(["data", "convert", path, "-o", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"fastchgnet data convert: error: {path}: 2 element names (Cu Au) but 1 count (4)"


def test_read_ase_checks_a_poscar_before_ase_reads_it(tmp_path):
    from fastchgnet.data.sources import read_ase

    path = poscar(tmp_path, coordinates="\n".join(POSITIONS[:3]))
    with pytest.raises(ValueError, match="counts line says 4 atoms, but 3 coordinate lines"):
        list(read_ase(path))
