"""The workflows refuse to hand back numbers that cannot be right: an EOS of a structure far
from its equilibrium volume, phonons of a supercell too small for the model's cutoff, strains
beyond the linear regime, a model in bf16; they warn of an elastic tensor or phonons of a
structure under stress or forces."""

from __future__ import annotations

import warnings

import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("matcalc")

from fastchgnet.errors import StructureError
from fastchgnet.workflows.elastic import elastic_tensor, equation_of_state
from fastchgnet.workflows.phonons import phonopy_run


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One torch thread, as the other model runs."""


def diamond_silicon(a: float) -> Structure:
    """The 8-atom conventional cell of diamond Si, lattice constant ``a`` Å."""
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), ["Si"], [[0, 0, 0]])


@pytest.mark.parametrize("a", [5.20, 5.70])  # the model's relaxed a is 5.46 Å
def test_equation_of_state_of_an_unrelaxed_structure_says_relax_first(model, a):
    message = r"^structure \(Si8\): the .*relax the structure first"
    with pytest.raises(StructureError, match=message):
        equation_of_state(diamond_silicon(a), model)


def test_equation_of_state_of_a_relaxed_structure_gives_its_bulk_modulus(model):
    result = equation_of_state(diamond_silicon(5.4614), model)
    assert 70 < result["bulk_modulus_bm"] < 85  # GPa; 77.9 measured


def fcc_copper() -> Structure:
    """The one-atom primitive cell of fcc Cu (a = 3.62 Å; primitive vectors 2.56 Å)."""
    sites = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    conventional = Structure(Lattice.cubic(3.62), ["Cu"] * 4, sites)
    return conventional.get_primitive_structure()


def test_phonopy_run_warns_of_a_supercell_shorter_than_ten_angstrom(model):
    message = r"shortest lattice length 5.1 Å is below 10.0 Å.*\(4, 4, 4\) reaches it$"
    with pytest.warns(UserWarning, match=message):
        phonopy_run(fcc_copper(), model, (2, 2, 2))


def test_phonopy_run_refuses_a_supercell_of_one_atom(model):
    with pytest.raises(ValueError, match=r"^supercell matrix .* holds one atom: .* all zero"):
        phonopy_run(fcc_copper(), model, (1, 1, 1))


FAR_FROM_EQUILIBRIUM = (
    r"^structure \(Si\d+\): residual stress (?P<stress>[\d.]+) GPa, largest force "
    r"(?P<force>[\d.]+) eV/Å \(above 1.0 GPa or 0.05 eV/Å\): far from equilibrium, so the "
    r"{workflow} is not the relaxed structure's; relax it first \(fastchgnet.md.relax\("
)


def far_from_equilibrium(record, workflow: str) -> tuple[float, float]:
    """The stress (GPa) and force (eV/Å) the one far-from-equilibrium warning names."""
    import re

    messages = [str(w.message) for w in record if "far from equilibrium" in str(w.message)]
    assert len(messages) == 1, messages
    match = re.match(FAR_FROM_EQUILIBRIUM.format(workflow=workflow), messages[0])
    assert match, messages[0]
    return float(match["stress"]), float(match["force"])


def test_elastic_tensor_of_a_compressed_cell_warns_with_its_stress(model):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        elastic_tensor(diamond_silicon(5.20), model)  # B_vrh 171.5 GPa against 68.5 relaxed
    stress, force = far_from_equilibrium(record, "elastic tensor")
    assert 18 < stress < 20  # GPa; 19.05 measured
    assert force < 1e-3


def test_elastic_tensor_of_a_cell_with_forces_warns_with_the_largest(model):
    primitive = diamond_silicon(5.4614).get_primitive_structure()
    primitive.translate_sites([1], [0.02, 0, 0], frac_coords=False)  # 0.15 eV/Å
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        elastic_tensor(primitive, model)
    _, force = far_from_equilibrium(record, "elastic tensor")
    assert 0.1 < force < 0.2  # eV/Å


def test_phonopy_run_of_a_compressed_cell_warns_with_its_stress(model):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        phonopy_run(diamond_silicon(5.20), model, (2, 2, 2))
    stress, _ = far_from_equilibrium(record, "phonon run")
    assert 18 < stress < 20  # GPa


def test_a_relaxed_structure_gives_no_equilibrium_warning(model):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        elastic_tensor(diamond_silicon(5.4614), model)  # 0.013 GPa, no force
    assert not [w for w in record if "far from equilibrium" in str(w.message)]


def test_elastic_moduli_depend_on_the_strains_fitted(model):
    """The README's caveat: the model's stress is not linear over 1-2 % strains (relaxed Si
    G_vrh 44.8 GPa from 0.5/1 % strains, 36.3 from 2/4 % measured)."""
    primitive = diamond_silicon(5.4614).get_primitive_structure()
    small = elastic_tensor(primitive, model, (-0.005, 0.005), (-0.01, 0.01))
    large = elastic_tensor(primitive, model, (-0.02, 0.02), (-0.04, 0.04))
    assert small["shear_modulus_vrh"] > 1.1 * large["shear_modulus_vrh"]
