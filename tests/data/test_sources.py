"""Frame readers: units converted once, missing labels None, VASP parity with chgnet."""

from __future__ import annotations

import gzip
import warnings
import zipfile

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from pymatgen.io.ase import AseAtomsAdaptor

from fastchgnet.data.frame import Frame, check_frame
from fastchgnet.data.sources import (
    from_structures,
    read_ase,
    read_frames,
    read_mptrj,
    read_vasp,
)
from fastchgnet.errors import StructureError
from fastchgnet.units import EV_PER_A3_TO_GPA
from tests.data.frames import REFERENCE, mptrj_record, rock_salt, write_mptrj


@pytest.fixture
def mptrj_file(tmp_path):
    materials = {
        "mp-1": {
            "mp-1-0-0": mptrj_record(rock_salt(0), 0),
            "mp-1-0-1": mptrj_record(rock_salt(1), 1),
        },
        "mp-2": {"mp-2-0-0": mptrj_record(rock_salt(2, 4.2, ("Li", "F")), 2, magmom=False)},
    }
    return write_mptrj(tmp_path / "mptrj.json", materials), materials


@pytest.mark.parametrize(
    ("key", "per_atom"),
    [
        ("corrected_total_energy", False),
        ("uncorrected_total_energy", False),
        ("energy_per_atom", True),
    ],
)
def test_mptrj_energy_key_is_per_atom(mptrj_file, key, per_atom):
    path, materials = mptrj_file
    frames = list(read_mptrj(path, energy_key=key))
    record = materials["mp-1"]["mp-1-0-1"]
    expected = record[key] if per_atom else record[key] / 8
    assert frames[1].energy_per_atom == pytest.approx(expected)


def test_mptrj_labels_converted_to_our_units(mptrj_file):
    path, materials = mptrj_file
    frames = list(read_mptrj(path))
    assert [(f.material_id, f.frame_id) for f in frames] == [
        ("mp-1", "mp-1-0-0"),
        ("mp-1", "mp-1-0-1"),
        ("mp-2", "mp-2-0-0"),
    ]
    record = materials["mp-1"]["mp-1-0-0"]
    np.testing.assert_allclose(frames[0].stress, np.array(record["stress"]) * -0.1)
    np.testing.assert_allclose(frames[0].forces, record["force"])
    np.testing.assert_allclose(frames[0].magmoms, np.abs(record["magmom"]))
    np.testing.assert_allclose(
        frames[0].structure.frac_coords, rock_salt(0).frac_coords, atol=1e-12
    )
    assert frames[2].magmoms is None
    assert isinstance(frames[0].energy_per_atom, float)


def test_mptrj_reads_gzip_and_rejects_unknown_energy_key(mptrj_file, tmp_path):
    path, _ = mptrj_file
    gz = tmp_path / "mptrj.json.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert len(list(read_frames(gz))) == 3
    with pytest.raises(ValueError, match="energy_key"):
        next(read_mptrj(path, energy_key="total"))


def test_ase_stress_keeps_sign_and_becomes_gpa(tmp_path):
    atoms = AseAtomsAdaptor.get_atoms(rock_salt(3))
    voigt = np.array([0.01, 0.02, 0.03, 0.004, 0.005, 0.006])  # eV/Å^3
    forces = np.random.default_rng(0).normal(size=(8, 3))
    atoms.calc = SinglePointCalculator(atoms, energy=-40.0, forces=forces, stress=voigt)
    atoms.info["material_id"] = "mp-9"
    path = tmp_path / "frames.extxyz"
    write(path, [atoms, atoms])
    frames = list(read_frames(path))
    assert len(frames) == 2
    frame = frames[0]
    assert frame.energy_per_atom == pytest.approx(-5.0)
    np.testing.assert_allclose(frame.forces, forces, atol=1e-6)
    # chgnet's CHGNetCalculator: ase stress = chgnet GPa * ase.units.GPa, same sign
    expected = np.array([[0.01, 0.006, 0.005], [0.006, 0.02, 0.004], [0.005, 0.004, 0.03]])
    np.testing.assert_allclose(frame.stress, expected * EV_PER_A3_TO_GPA, rtol=1e-6)
    assert frame.material_id == "mp-9"
    assert frame.magmoms is None


def test_frames_with_noble_gases_are_named_without_pymatgens_warnings():
    """pymatgen warns once per noble gas and process when it sorts a formula by
    electronegativity; the quick start's conversion printed three such warnings. Its cache
    of the value is cleared first, so that an earlier test's lookup cannot hide one here."""
    from pymatgen.core import Element

    structure = rock_salt(3, species=("Ne", "He"))
    for element in (Element.He, Element.Ne):
        element.__dict__.pop("X", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (frame,) = read_ase([AseAtomsAdaptor.get_atoms(structure)])
        name = Frame(structure=structure, material_id="m", frame_id="f").name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = structure.composition.reduced_formula  # what the id was derived from before
    assert frame.material_id == f"atoms:{before}" == "atoms:HeNe"
    assert name == "frame f of m (He4Ne4)"


def test_an_ase_file_with_noble_gases_reads_without_pymatgens_warnings(tmp_path):
    """The quick start's own path: an extxyz file without material ids, read with labels."""
    from pymatgen.core import Element

    source = tmp_path / "gases.extxyz"
    write(source, [AseAtomsAdaptor.get_atoms(rock_salt(4, species=("Ar", "He")))])
    for element in (Element.He, Element.Ar):
        element.__dict__.pop("X", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (frame,) = read_frames(source)
    assert frame.material_id == "gases:ArHe"  # pymatgen's reduced formula, as before
    assert frame.name == "frame gases-0 of gases:ArHe (He4Ar4)"


def test_atoms_without_a_cell_become_a_frame_that_names_its_problem():
    from ase.build import molecule

    crystal, water = AseAtomsAdaptor.get_atoms(rock_salt(2)), molecule("H2O")
    kept, bad = read_ase([crystal, water])
    assert kept.problem is None
    check_frame(kept)
    assert bad.problem.startswith("no periodic cell")
    assert sorted(bad.structure.atomic_numbers) == [1, 1, 8]  # its species, for its name
    with pytest.raises(StructureError, match=r"frame atoms-1 of atoms:H2O .*no periodic cell"):
        check_frame(bad)


def test_ase_atoms_without_results_have_no_labels():
    frames = list(read_ase([AseAtomsAdaptor.get_atoms(rock_salt(4))]))
    frame = frames[0]
    assert frame.energy_per_atom is None
    assert frame.forces is None
    assert frame.stress is None
    assert frame.material_id == "atoms:NaCl"


def test_from_structures_checks_label_counts():
    structures = [rock_salt(0), rock_salt(1)]
    frames = list(from_structures(structures, energies=[-1.0, None], magmoms=[-np.ones(8)] * 2))
    assert frames[1].energy_per_atom is None
    np.testing.assert_array_equal(frames[0].magmoms, np.ones(8))
    with pytest.raises(ValueError, match="forces has 1 entries for 2 structures"):
        list(from_structures(structures, forces=[np.zeros((8, 3))]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"forces": np.zeros((7, 3))}, "forces has shape"),
        ({"stress": np.full((3, 3), np.nan)}, "stress has non-finite"),
        ({"energy_per_atom": float("nan")}, "energy_per_atom is nan"),
        ({"magmoms": np.zeros(9)}, "magmoms has shape"),
    ],
)
def test_check_frame_names_the_frame_and_problem(change, message):
    frame = Frame(structure=rock_salt(0), material_id="mp-5", frame_id="f-1", **change)
    with pytest.raises(StructureError, match=message) as error:
        check_frame(frame)
    assert "f-1" in str(error.value)
    assert "mp-5" in str(error.value)


def test_check_frame_rejects_elements_beyond_plutonium():
    frame = Frame(structure=rock_salt(0, species=("Am", "Cl")), material_id="m", frame_id="f")
    with pytest.raises(StructureError, match="Z=\\[95\\]"):
        check_frame(frame)


def _oszicar_e0(path) -> list[float]:
    """E0 (sigma -> 0 energy, eV) of every ionic step, as OSZICAR prints it."""
    return [float(line.split("E0=")[1].split()[0]) for line in open(path) if "E0=" in line]


def test_vasp_energy_is_oszicar_e0_where_vasprun_xml_is_wrong():
    frames = list(read_vasp(reference_run("parse-vasp-no-magmoms")))
    # vasprun.xml's e_0_energy of the last step is -0.164 eV; OSZICAR: E0= -.25379851E+03
    assert frames[-1].energy_per_atom * 32 == pytest.approx(-253.79851, abs=1e-5)
    assert frames[0].energy_per_atom * 32 == pytest.approx(-208.57017, abs=1e-5)


def reference_run(name: str):
    path = REFERENCE / f"{name}.zip"
    if not path.is_file():
        pytest.skip(f"{path} not present (shared reference data)")
    return path


@pytest.mark.parametrize("name", ["parse-vasp-with-magmoms", "parse-vasp-no-magmoms"])
def test_vasp_run_matches_chgnet_parse_vasp_dir(name, tmp_path):
    from chgnet.utils.vasp_utils import parse_vasp_dir

    archive = reference_run(name)
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = parse_vasp_dir(str(tmp_path / name))
    frames = list(read_vasp(archive))
    assert len(frames) == len(reference["structure"])
    oszicar = _oszicar_e0(tmp_path / name / "OSZICAR")
    for k, frame in enumerate(frames):
        # energies: OSZICAR's E0, not chgnet's (it reads vasprun.xml's buggy e_0_energy)
        n_atoms = len(frame.structure)
        assert frame.energy_per_atom == pytest.approx(oszicar[k] / n_atoms, rel=1e-7, abs=1e-7)
        np.testing.assert_allclose(frame.forces, reference["force"][k])
        np.testing.assert_allclose(frame.stress, np.array(reference["stress"][k]) * -0.1)
        np.testing.assert_allclose(
            frame.structure.lattice.matrix, reference["structure"][k].lattice.matrix
        )
        if reference["magmom"]:
            np.testing.assert_allclose(frame.magmoms, np.abs(reference["magmom"][k]))
        else:
            assert frame.magmoms is None
    assert frames[0].frame_id == f"{name}-0"
    assert frames[0].material_id == name


def test_gunzip_never_leaves_a_half_written_file(tmp_path) -> None:
    """A decompression that fails part way (here a truncated gzip) keeps the whole earlier
    file, and leaves no temp file: parallel readers of the same scratch folder are safe."""
    import gzip

    from fastchgnet.data.sources import gunzip_ase_file

    text = b"".join(b"line %d of a labelled file\n" % i for i in range(20000))
    source = tmp_path / "frames.extxyz.gz"
    source.write_bytes(gzip.compress(text))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    plain = gunzip_ase_file(source, scratch)
    assert plain.read_bytes() == text
    whole = gzip.compress(text[::-1])
    source.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="not a readable gzip file"):
        gunzip_ase_file(source, scratch)
    assert plain.read_bytes() == text
    assert [p.name for p in scratch.iterdir()] == [plain.name]
