"""chgnet's ``EquationOfState`` and ``chgnet.utils`` names under fastchgnet.compat: the bulk
modulus of LiMnO2 as the reference's, VASP runs in chgnet's format, JSON helpers, oxidation
states by magnetic moment."""

from __future__ import annotations

import warnings
import zipfile

import numpy as np
import pytest

from fastchgnet.compat import EquationOfState
from fastchgnet.compat.utils import (
    determine_device,
    parse_vasp_dir,
    read_json,
    solve_charge_by_mag,
    write_json,
)
from tests.conftest import SHARED

#: chgnet 0.4.2's EquationOfState().fit(LiMnO2).get_bulk_modulus("GPa") (103.8458 measured)
REFERENCE_BULK_MODULUS_GPA = 103.8458


@pytest.fixture(scope="module")
def fitted_eos(compat_model, limno2):
    eos = EquationOfState(model=compat_model, use_device="cpu")
    eos.fit(limno2)
    return eos


def test_bulk_modulus_of_limno2_is_the_references(fitted_eos):
    assert fitted_eos.get_bulk_modulus("GPa") == pytest.approx(REFERENCE_BULK_MODULUS_GPA, abs=0.05)
    in_ev = fitted_eos.get_bulk_modulus()  # eV/Å^3, chgnet's default unit
    assert in_ev * 160.21766 == pytest.approx(fitted_eos.get_bulk_modulus("GPa"), rel=1e-5)
    assert fitted_eos.get_compressibility() == pytest.approx(1 / in_ev)
    gpa = fitted_eos.get_bulk_modulus("GPa")
    assert fitted_eos.get_compressibility("Pa^-1") == pytest.approx(1e-9 / gpa)
    with pytest.raises(ValueError, match="unit='kbar'"):
        fitted_eos.get_bulk_modulus("kbar")


def test_eos_must_be_fitted_first(compat_model):
    with pytest.raises(ValueError, match="fitted first"):
        EquationOfState(model=compat_model, use_device="cpu").get_bulk_modulus()


@pytest.mark.slow
def test_eos_equals_the_reference_run_live(chgnet_ref, fitted_eos, limno2):
    from chgnet.model.dynamics import EquationOfState as ReferenceEOS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = ReferenceEOS(use_device="cpu")
        reference.fit(limno2)
    assert fitted_eos.get_bulk_modulus("GPa") == pytest.approx(
        reference.get_bulk_modulus("GPa"), abs=0.05
    )


def test_json_helpers_write_numpy_and_read_back(tmp_path):
    path = str(tmp_path / "data.json")
    write_json({"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(3)}, path)
    assert read_json(path) == {"n": 3, "x": 0.5, "a": [0, 1, 2]}


def test_determine_device_is_chgnets():
    assert determine_device("cpu") == "cpu"


@pytest.mark.parametrize("name", ["parse-vasp-with-magmoms", "parse-vasp-no-magmoms"])
def test_parse_vasp_dir_gives_chgnets_format(chgnet_ref, name, tmp_path):
    from chgnet.utils import parse_vasp_dir as reference_parse

    archive = SHARED / "data" / "reference" / f"{name}.zip"
    if not archive.is_file():
        pytest.skip(f"{archive} not present (shared reference data)")
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(tmp_path)
    run = str(tmp_path / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = reference_parse(run)
        ours = parse_vasp_dir(run, save_path=str(tmp_path / "saved.json"))
    assert set(ours) == set(reference)
    for key in reference:
        assert len(ours[key]) == len(reference[key]), key
    np.testing.assert_allclose(np.array(ours["force"]), np.array(reference["force"]))
    np.testing.assert_allclose(np.array(ours["stress"]), np.array(reference["stress"]), atol=1e-9)
    assert type(ours["force"][0]) is type(reference["force"][0])
    if reference["magmom"]:  # ours are absolute, as chgnet's training reads them
        np.testing.assert_allclose(ours["magmom"], np.abs(reference["magmom"]))
    assert ours["structure"][0] == reference["structure"][0]
    assert len(read_json(str(tmp_path / "saved.json"))["structure"]) == len(ours["structure"])
    with pytest.raises(NotADirectoryError):
        parse_vasp_dir(str(tmp_path / "missing"))


def test_solve_charge_by_mag_as_the_reference(chgnet_ref, limno2):
    from chgnet.utils import solve_charge_by_mag as reference_solve

    structure = limno2.copy()
    structure.remove_oxidation_states()
    magmoms = [3.9 if site.species_string == "Mn" else 0 for site in structure]
    structure.add_site_property("magmom", magmoms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = reference_solve(structure)
    ours = solve_charge_by_mag(structure)
    assert "Mn3+" in [str(site.specie) for site in ours]
    assert [str(site.specie) for site in ours] == [str(site.specie) for site in theirs]
    structure.add_site_property("magmom", [9.0] * len(limno2))
    with pytest.warns(UserWarning, match="Failed to solve oxidation state"):
        assert solve_charge_by_mag(structure) is None
