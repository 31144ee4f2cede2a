"""Phonons (phonopy, batched displaced supercells), equation of state and elastic tensor,
against the reference chgnet run through the same workflow in the same test."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("phonopy")

from fastchgnet.workflows.batch import batched_evaluator, calculator_evaluator
from fastchgnet.workflows.elastic import (
    elastic_tensor,
    equation_of_state,
    voigt_bulk_modulus,
)
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
    phonon = phonopy_run(silicon, batched_evaluator(model), supercell_matrix=(2, 2, 2))
    assert acoustic_sum(phonon.force_constants) < 1e-4  # eV/Å^2, forces sum to zero
    frequencies = gamma_frequencies(phonon)
    assert np.abs(frequencies[:3]).max() < 0.05  # THz: the three acoustic modes
    assert frequencies[3] > 10.0  # optical modes of Si near 15 THz


def test_batched_force_constants_equal_per_structure(model, reference_structures):
    limno2 = reference_structures[0]
    batched = phonopy_run(limno2, batched_evaluator(model, batch_size=64), (1, 1, 1))
    assert len(batched.supercells_with_displacements) > 4
    one_by_one = phonopy_run(limno2, batched_evaluator(model, batch_size=1), (1, 1, 1))
    difference = np.abs(batched.force_constants - one_by_one.force_constants).max()
    assert difference < 1e-4  # eV/Å^2; float32 sums in other orders


@pytest.mark.slow
def test_bulk_modulus_and_elastic_tensor_match_reference_and_run_faster(
    model, reference_chgnet, silicon, reference_structures
):
    from chgnet.model import CHGNetCalculator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calculator = CHGNetCalculator(reference_chgnet, use_device="cpu")
    ours, theirs = batched_evaluator(model), calculator_evaluator(calculator)
    for structure in (silicon, reference_structures[0]):
        start = time.perf_counter()
        eos, tensor = equation_of_state(structure, ours), elastic_tensor(structure, ours)
        our_seconds = time.perf_counter() - start
        start = time.perf_counter()
        ref_eos, ref_tensor = (
            equation_of_state(structure, theirs),
            elastic_tensor(structure, theirs),
        )
        ref_seconds = time.perf_counter() - start
        name = structure.formula
        assert eos.bulk_modulus == pytest.approx(ref_eos.bulk_modulus, rel=0.02), name
        assert voigt_bulk_modulus(tensor) == pytest.approx(voigt_bulk_modulus(ref_tensor), rel=0.02)
        assert np.abs(tensor - ref_tensor).max() <= 0.02 * np.abs(ref_tensor).max(), name
        assert our_seconds < ref_seconds, f"{name}: {our_seconds:.2f} s vs {ref_seconds:.2f} s"
