"""The workflows refuse to hand back numbers that cannot be right: an EOS of a structure far
from its equilibrium volume, phonons of a supercell too small for the model's cutoff, strains
beyond the linear regime, a model in bf16."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("matcalc")

from fastchgnet.errors import StructureError
from fastchgnet.workflows.elastic import equation_of_state
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
