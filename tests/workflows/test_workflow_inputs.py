"""The workflows refuse, in one line naming the argument, inputs that cannot give a result:
a path instead of a structure, too few EOS points, a singular phonon supercell matrix. The
checks come before matcalc or phonopy is imported or any cell is evaluated."""

from __future__ import annotations

import pytest
from ase.build import molecule
from pymatgen.core import Lattice, Structure

from fastchgnet import FastCHGNet
from fastchgnet.errors import StructureError
from fastchgnet.workflows.elastic import elastic_tensor, equation_of_state
from fastchgnet.workflows.phonons import phonopy_run

ROCKSALT = Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def small_model():
    return FastCHGNet(n_conv=2)


@pytest.mark.parametrize("workflow", [equation_of_state, elastic_tensor, phonopy_run])
def test_a_workflow_given_a_path_names_the_type(small_model, workflow):
    with pytest.raises(TypeError, match=r"got str \(.*a path: Structure.from_file\)$"):
        workflow("NaCl.cif", small_model)


@pytest.mark.parametrize("n_points", [2, 3])
def test_equation_of_state_with_too_few_points_says_the_fit_needs_four(small_model, n_points):
    with pytest.raises(ValueError, match=rf"^n_points={n_points}: .*needs >= 4 points$"):
        equation_of_state(ROCKSALT, small_model, n_points=n_points)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"n_points": 7.0}, TypeError, r"^n_points must be an int >= 4, got 7.0$"),
        ({"max_abs_strain": 0.0}, ValueError, r"^max_abs_strain=0.0: a linear strain with 0 <"),
        ({"max_abs_strain": 0.9}, ValueError, r"^max_abs_strain=0.9: .* <= 0.1 \(larger"),
        ({"max_abs_strain": 0.5}, ValueError, r"^max_abs_strain=0.5: .* <= 0.1 \(larger"),
        ({"max_abs_strain": float("nan")}, ValueError, r"^max_abs_strain=nan: "),
        ({"max_abs_strain": -0.02}, ValueError, r"^max_abs_strain=-0.02: give it positive"),
        ({"max_abs_strain": "0.02"}, TypeError, r"^max_abs_strain must be a number, got '0.02'"),
    ],
)
def test_equation_of_state_names_a_bad_option(small_model, options, error, message):
    with pytest.raises(error, match=message):
        equation_of_state(ROCKSALT, small_model, **options)


@pytest.mark.parametrize("matrix", [(2, 0, 2), [[1, 0, 0], [0, 1, 0], [1, 1, 0]]])
def test_phonopy_run_with_a_singular_supercell_matrix_names_it(small_model, matrix):
    with pytest.raises(ValueError, match=r"^supercell matrix \[\[.*\]\] is singular"):
        phonopy_run(ROCKSALT, small_model, supercell_matrix=matrix)


@pytest.mark.parametrize("matrix", [(2, 2), (2, 2, 2.5), [[1, 0], [0, 1, 0]], "222"])
def test_phonopy_run_with_a_malformed_supercell_matrix_names_it(small_model, matrix):
    with pytest.raises(ValueError, match=r"^supercell matrix .*: give 3 integers or a 3x3"):
        phonopy_run(ROCKSALT, small_model, supercell_matrix=matrix)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"norm_strains": (-0.5, 0.5)}, ValueError, r"^norm_strains=-0.5: .* <= 0.1 \(larger"),
        ({"shear_strains": 0.2}, ValueError, r"^shear_strains=0.2: .* <= 0.1 \(larger"),
        ({"norm_strains": (0.01, 0.0)}, ValueError, r"^norm_strains=0.0: "),
        ({"shear_strains": ()}, ValueError, r"^shear_strains is empty"),
        ({"norm_strains": "0.01"}, TypeError, r"^norm_strains must be a number or a sequence"),
    ],
)
def test_elastic_tensor_names_a_bad_strain(small_model, options, error, message):
    with pytest.raises(error, match=message):
        elastic_tensor(ROCKSALT, small_model, **options)


def test_elastic_tensor_takes_one_strain_as_a_number(small_model):
    result = elastic_tensor(ROCKSALT, small_model, norm_strains=0.01, shear_strains=0.02)
    assert result["elastic_tensor"].voigt.shape == (6, 6)


@pytest.mark.parametrize("workflow", [equation_of_state, elastic_tensor, phonopy_run])
def test_a_workflow_refuses_a_bf16_model(workflow):
    model = FastCHGNet(n_conv=2).set_precision("bf16", "cpu")
    with pytest.raises(ValueError, match=r"^the model runs in bf16: .*set_precision\('float32'\)"):
        workflow(ROCKSALT, model)


@pytest.mark.parametrize(
    ("displacement", "error", "message"),
    [
        (0, ValueError, r"^displacement=0: a finite displacement in \(0, 0.2\] Å"),
        (float("nan"), ValueError, r"^displacement=nan: "),
        (0.5, ValueError, r"^displacement=0.5: "),
        ("0.01", TypeError, r"^displacement must be a number \(Å\), got '0.01' \(str\)$"),
    ],
)
def test_phonopy_run_names_a_bad_displacement(small_model, displacement, error, message):
    with pytest.raises(error, match=message):
        phonopy_run(ROCKSALT, small_model, displacement=displacement)


@pytest.mark.parametrize("matrix", [(-1, 1, 1), (-2, -2, -2)])
def test_phonopy_run_with_a_negative_determinant_names_it(small_model, matrix):
    with pytest.raises(ValueError, match=r"^supercell matrix \[\[.*\]\] has determinant -\d+: "):
        phonopy_run(ROCKSALT, small_model, supercell_matrix=matrix)


@pytest.mark.parametrize("workflow", [equation_of_state, elastic_tensor, phonopy_run])
def test_a_workflow_given_a_disordered_structure_says_so(small_model, workflow):
    disordered = Structure(Lattice.cubic(4.2), [{"Na": 0.5, "K": 0.5}, "Cl"], ROCKSALT.frac_coords)
    with pytest.raises(StructureError, match=r"^structure \(.*\): is disordered"):
        workflow(disordered, small_model)


@pytest.mark.parametrize("workflow", [equation_of_state, elastic_tensor, phonopy_run])
def test_a_workflow_given_a_molecule_asks_for_periodic_boundaries(small_model, workflow):
    water = molecule("H2O")
    with pytest.raises(StructureError, match=r"^structure \(H2O\): needs periodic boundaries"):
        workflow(water, small_model)


@pytest.mark.parametrize("model", [None, "0.3.0"])
@pytest.mark.parametrize("workflow", [equation_of_state, elastic_tensor, phonopy_run])
def test_a_workflow_given_no_model_says_what_it_takes(workflow, model):
    with pytest.raises(TypeError, match=r"^model_or_calculator: expected a FastCHGNet, a Pot"):
        workflow(ROCKSALT, model)


def test_a_workflow_given_the_reference_model_says_to_wrap_it(reference_chgnet):
    with pytest.raises(TypeError, match=r"got CHGNet; .* chgnet's CHGNetCalculator\(model\)"):
        equation_of_state(ROCKSALT, reference_chgnet)


@pytest.mark.parametrize("symmetrize", ["no", 0, None])
def test_phonopy_run_takes_only_a_bool_for_symmetrize(small_model, symmetrize):
    with pytest.raises(TypeError, match=rf"^symmetrize must be True or False, got {symmetrize!r}$"):
        phonopy_run(ROCKSALT, small_model, symmetrize=symmetrize)
