"""The fastchgnet command: predict end to end, and one-line errors with exit code 1."""

from __future__ import annotations

import json

import pytest

from fastchgnet.cli import main
from fastchgnet.data.synthetic import varied_structures


def test_predict_writes_json_for_each_structure(tmp_path):
    pytest.importorskip("chgnet")
    paths = []
    for k, structure in enumerate(varied_structures(3, seed=2, max_atoms=12)):
        path = tmp_path / f"s{k}.cif"
        structure.to(filename=str(path))
        paths.append(str(path))
    out = tmp_path / "out.json"
    assert main(["predict", *paths, "-o", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["name"] for r in records] == ["s0.cif", "s1.cif", "s2.cif"]
    assert all(len(r["forces_eV_per_A"]) == len(r["magmoms_muB"]) for r in records)


def test_predict_missing_file_is_a_one_line_error(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope.cif")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "nope.cif: no such file" in err


def test_predict_unreadable_file_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.cif"
    bad.write_text("this is not a crystal\n")
    assert main(["predict", str(bad)]) == 1
    assert "bad.cif: cannot read a structure" in capsys.readouterr().err


def test_predict_element_out_of_range_names_it(tmp_path, capsys):
    pytest.importorskip("chgnet")
    from pymatgen.core import Lattice, Structure

    path = tmp_path / "am.cif"
    Structure(Lattice.cubic(3.0), ["Am"], [[0, 0, 0]]).to(filename=str(path))
    assert main(["predict", str(path)]) == 1
    assert "Z=[95]" in capsys.readouterr().err


def test_unknown_subcommand_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["fly"])
    assert exit_info.value.code == 2
