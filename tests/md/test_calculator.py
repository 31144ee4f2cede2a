"""The ASE calculator: same numbers as predict_structure, ASE units and sign, every model mode,
batched evaluation equal to one-by-one, and errors that name the structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.stress import full_3x3_to_voigt_6_stress

from fastchgnet import FastCHGNet
from fastchgnet.errors import StructureError
from fastchgnet.md.calculator import Calculator, as_atoms, evaluate_graphs


def assert_matches_predict(model, atoms) -> None:
    expected = model.predict_structure(atoms)
    atoms.calc = Calculator(model)
    n = len(atoms)
    # the calculator's graph lists bonds in another order, so float32 sums differ in the last
    # bits: ~1e-6 relative to the largest term, which for a near-zero energy (Cs, 0.07 eV/atom)
    # is ~1e-5 relative to the result; compare at 1e-6 relative plus 2e-6 eV/atom absolute
    np.testing.assert_allclose(
        atoms.get_potential_energy() / n, expected["e"], rtol=1e-6, atol=2e-6
    )
    np.testing.assert_allclose(atoms.get_forces(), expected["f"], atol=2e-5)
    stress = full_3x3_to_voigt_6_stress(expected["s"] * units.GPa)
    np.testing.assert_allclose(atoms.get_stress(), stress, atol=1e-6)
    np.testing.assert_allclose(atoms.get_magnetic_moments(), expected["m"], atol=1e-5)


def test_reference_model_gives_predict_structure_numbers(model, small_crystals):
    for atoms in small_crystals[:3]:
        assert_matches_predict(model, atoms)


def test_direct_model_gives_predict_structure_numbers(small_crystals):
    torch.manual_seed(0)
    direct = FastCHGNet(forces="direct")
    for atoms in small_crystals[:2]:
        assert_matches_predict(direct, atoms)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_stress_agrees_with_reference_calculator_in_ase_units(model, reference_chgnet):
    from chgnet.model.dynamics import CHGNetCalculator

    from fastchgnet.data.random_crystals import varied_structures

    atoms = as_atoms(varied_structures(1, seed=5, max_atoms=8)[0])
    reference = atoms.copy()
    reference.calc = CHGNetCalculator(reference_chgnet, use_device="cpu")
    atoms.calc = Calculator(model)
    np.testing.assert_allclose(atoms.get_stress(), reference.get_stress(), atol=2e-5)
    np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), atol=2e-4)
    assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-3)


def test_batched_evaluation_equals_one_structure_at_a_time(model, small_crystals):
    calculators = [Calculator(model) for _ in small_crystals]
    graphs = [c.graph(a) for c, a in zip(calculators, small_crystals, strict=True)]
    together = evaluate_graphs(model, graphs, stress=True)
    for graph, result in zip(graphs, together, strict=True):
        alone = evaluate_graphs(model, [graph], stress=True)[0]
        for key in ("energy", "forces", "stress", "magmoms"):
            np.testing.assert_allclose(result[key], alone[key], rtol=1e-5, atol=1e-5)


def test_stress_is_computed_only_when_asked(model, small_crystals):
    atoms = small_crystals[0]
    atoms.calc = Calculator(model)
    atoms.get_forces()
    assert "stress" not in atoms.calc.results
    atoms.calc = Calculator(model, always_stress=True)
    atoms.get_forces()
    assert atoms.calc.results["stress"].shape == (6,)


def test_moving_atoms_recomputes_and_reuses_the_neighbour_search(model, small_crystals):
    atoms = small_crystals[1]
    atoms.calc = calc = Calculator(model, skin=1.0)
    first = atoms.get_potential_energy()
    atoms.positions[0] += 0.05
    assert atoms.get_potential_energy() != first
    assert calc.neighbours.n_builds == 1


def test_element_beyond_the_model_is_named(model):
    from ase import Atoms

    atoms = Atoms("Am2", positions=[[0, 0, 0], [1.5, 1.5, 1.5]], cell=[3, 3, 3], pbc=True)
    atoms.calc = Calculator(model)
    with pytest.raises(StructureError, match=r"Am \(Z=95\) beyond the model's 94"):
        atoms.get_potential_energy()


def test_state_check_reports_what_ase_reports(model, small_crystals):
    """The calculator's exact-equality fast path gives ASE's ``compare_atoms`` answer for
    every change ASE tracks (and none when nothing changed), so it never skips a recompute."""
    from ase.calculators.calculator import compare_atoms

    atoms = small_crystals[0]
    atoms.calc = calc = Calculator(model)
    atoms.get_forces()
    assert calc.check_state(atoms) == []
    edits = {
        "positions": lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-9),
        "cell": lambda a: a.set_cell(a.cell.array * 1.001, scale_atoms=False),
        "pbc": lambda a: a.set_pbc([True, True, False]),
        "numbers": lambda a: a.numbers.__setitem__(0, 3),
        "initial_magmoms": lambda a: a.set_initial_magnetic_moments(np.ones(len(a))),
        "initial_charges": lambda a: a.set_initial_charges(np.ones(len(a))),
    }
    for prop, edit in edits.items():
        changed = atoms.copy()
        edit(changed)
        expected = compare_atoms(calc.atoms, changed, excluded_properties=set(calc.ignored_changes))
        assert sorted(calc.check_state(changed)) == sorted(expected) == [prop], prop
    tiny = atoms.copy()
    tiny.positions[0, 0] += 1e-17  # within ASE's tolerance of 1e-15: no change for either
    assert calc.check_state(tiny) == compare_atoms(calc.atoms, tiny)


def test_the_calculator_moves_the_model_to_the_device_it_is_given() -> None:
    """``device=`` moves the model (or a Potential's model) there, where ASE would otherwise
    keep an unknown keyword and run on the CPU; the reference's ``use_device`` is named."""
    from fastchgnet.model.potential import EagerPotential

    for wrap in (lambda m: m, EagerPotential):
        model = FastCHGNet(n_conv=2)
        Calculator(wrap(model), device="meta")
        assert {p.device.type for p in model.parameters()} == {"meta"}
    with pytest.raises(TypeError, match="device="):
        Calculator(FastCHGNet(n_conv=2), use_device="cuda")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_slab_open_along_its_normal_gets_the_reference_numbers(model, reference_chgnet):
    """ASE's slabs (pbc True, True, False) were refused; the reference treats them as periodic,
    which with vacuum beyond the cutoff is the open slab itself. Turning pbc off on a slab too
    thin for it is refused at the next call (the neighbour search is made again)."""
    from ase.build import fcc111
    from chgnet.model.dynamics import CHGNetCalculator

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=8.0)
    reference = slab.copy()
    reference.calc = CHGNetCalculator(reference_chgnet, use_device="cpu")
    slab.calc = Calculator(model)
    assert slab.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-3)
    np.testing.assert_allclose(slab.get_forces(), reference.get_forces(), atol=2e-4)
    thin = fcc111("Cu", size=(2, 2, 3), vacuum=2.0)
    thin.pbc = True
    thin.calc = Calculator(model)
    thin.get_potential_energy()
    thin.pbc = [True, True, False]
    with pytest.raises(StructureError, match="across axis 2, along which it is not periodic"):
        thin.get_potential_energy()
