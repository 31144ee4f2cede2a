"""Phonons, equation of state and elastic tensor through matcalc (PhononCalc, EOSCalc,
ElasticityCalc) with our cells evaluated in batches ahead, against the reference chgnet's
calculator run through the same matcalc workflow in the same test."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("phonopy")

from fastchgnet.md.calculator import Calculator
from fastchgnet.workflows.batch import PrefetchCalculator
from fastchgnet.workflows.elastic import elastic_tensor, equation_of_state
from fastchgnet.workflows.phonons import acoustic_sum, gamma_frequencies, phonopy_run


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One torch thread, as the other reference comparisons."""


@pytest.fixture(scope="module")
def silicon():
    lattice = Lattice.cubic(5.47)
    return Structure.from_spacegroup(
        "Fd-3m", lattice, ["Si"], [[0, 0, 0]]
    ).get_primitive_structure()


def test_acoustic_sum_rule_and_gamma_frequencies_near_zero(model, silicon):
    with pytest.warns(UserWarning, match="shortest lattice length"):  # 7.7 Å
        phonon = phonopy_run(silicon, model, supercell_matrix=(2, 2, 2))
    assert acoustic_sum(phonon.force_constants) < 1e-4  # eV/Å^2, forces sum to zero
    frequencies = gamma_frequencies(phonon)
    assert np.abs(frequencies[:3]).max() < 0.05  # THz: the three acoustic modes
    assert frequencies[3] > 10.0  # optical modes of Si near 15 THz


def rocksalt_nacl() -> Structure:
    """The 2-atom primitive cell of NaCl at the model's relaxed a = 5.6928 Å."""
    conventional = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.6928), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    return conventional.get_primitive_structure()


def test_acoustic_sum_counts_both_atom_indices():
    force_constants = np.zeros((2, 2, 3, 3))
    force_constants[0, 0] = np.eye(3)  # rows sum to zero, columns do not
    force_constants[0, 1] = -np.eye(3)
    assert acoustic_sum(force_constants) == 1.0
    assert acoustic_sum(force_constants[:1]) == 0.0  # compact: only the second index sums


def test_nacl_force_constants_break_the_sum_rule_until_symmetrized(model):
    """Unsymmetrized (matcalc's finite differences), NaCl's break the rule over the displaced
    atom's index (0.043 eV/Å^2, Γ acoustic 0.21 THz measured); symmetrized they keep it, and
    phonopy's warnings about the unsymmetrized ones are gone."""
    nacl = rocksalt_nacl()
    raw = phonopy_run(nacl, model, (3, 3, 3))
    assert 1e-2 < acoustic_sum(raw.force_constants) < 0.1  # eV/Å^2
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r".*acoustic")
        symmetrized = phonopy_run(nacl, model, (3, 3, 3), symmetrize=True)
    assert acoustic_sum(symmetrized.force_constants) < 1e-10
    acoustic = np.sort(np.abs(gamma_frequencies(symmetrized)))[:3]
    assert acoustic.max() < 1e-3  # THz


def test_batched_force_constants_equal_per_structure(model, reference_structures):
    limno2 = reference_structures[0]
    prefetching = PrefetchCalculator(model)
    with pytest.warns(UserWarning, match="shortest lattice length"):
        batched = phonopy_run(limno2, prefetching, (1, 1, 1))
    assert len(batched.supercells_with_displacements) > 4
    assert prefetching.misses == 0  # every displaced supercell came from the batched prefetch
    with pytest.warns(UserWarning, match="shortest lattice length"):
        one_by_one = phonopy_run(limno2, PrefetchCalculator(model, batch_size=1), (1, 1, 1))
    difference = np.abs(batched.force_constants - one_by_one.force_constants).max()
    assert difference < 1e-4  # eV/Å^2; float32 sums in other orders


def test_matcalc_workflows_answered_from_batched_prefetch_equal_per_structure(model, silicon):
    prefetching = PrefetchCalculator(model)
    batched = elastic_tensor(silicon, prefetching), equation_of_state(silicon, prefetching)
    assert prefetching.misses == 0  # every cell matcalc asked for was prefetched
    assert prefetching.hits >= 25
    one_by_one = Calculator(model, always_stress=True)
    single = elastic_tensor(silicon, one_by_one), equation_of_state(silicon, one_by_one)
    difference = batched[0]["elastic_tensor"].voigt - single[0]["elastic_tensor"].voigt
    assert np.abs(difference).max() < 0.05  # GPa; float32 sums in other orders
    assert batched[1]["bulk_modulus_bm"] == pytest.approx(single[1]["bulk_modulus_bm"], rel=1e-3)


def test_prefetch_calculator_computes_a_cell_it_was_not_given(model, silicon):
    prefetching = PrefetchCalculator(model)
    prefetching.prefetch([silicon.copy().apply_strain(0.01)])
    atoms = silicon.to_ase_atoms()
    atoms.calc = prefetching
    energy, stress = atoms.get_potential_energy(), atoms.get_stress()
    assert (prefetching.hits, prefetching.misses) == (0, 1)
    atoms.calc = Calculator(model, always_stress=True)
    assert energy == pytest.approx(atoms.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(stress, atoms.get_stress(), atol=1e-6)


def test_bulk_modulus_and_elastic_tensor_match_reference_and_run_faster(
    model, reference_chgnet, silicon, reference_structures
):
    pytest.importorskip("matcalc")
    from chgnet.model import CHGNetCalculator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = CHGNetCalculator(reference_chgnet, use_device="cpu")
    for structure in (silicon, reference_structures[0]):
        name, runs = structure.formula, {}
        for side, calculator in (("ours", model), ("ref", theirs)):
            start = time.perf_counter()
            eos = equation_of_state(structure, calculator)["bulk_modulus_bm"]
            elastic = elastic_tensor(structure, calculator)
            runs[side] = (eos, elastic, time.perf_counter() - start)
        (eos, elastic, our_seconds), (ref_eos, ref_elastic, ref_seconds) = runs["ours"], runs["ref"]
        assert eos == pytest.approx(ref_eos, rel=0.02), name
        bulk, ref_bulk = elastic["bulk_modulus_vrh"], ref_elastic["bulk_modulus_vrh"]
        assert bulk == pytest.approx(ref_bulk, rel=0.02), name
        tensor, reference = elastic["elastic_tensor"].voigt, ref_elastic["elastic_tensor"].voigt
        assert np.abs(tensor - reference).max() <= 0.02 * np.abs(reference).max(), name
        assert our_seconds < ref_seconds, f"{name}: {our_seconds:.2f} s vs {ref_seconds:.2f} s"
