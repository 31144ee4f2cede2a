"""compat ``CHGNetCalculator``'s results as chgnet's, run side by side on LiMnO2: the same
keys and float types (the model's numpy outputs: float32 for a float32 model)."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
from pymatgen.io.ase import AseAtomsAdaptor

from fastchgnet.compat import CHGNetCalculator
from tests.compat.test_usage import EXTRA
from tests.model.test_parity import TOLERANCE


def reference_calculator(chgnet_ref, reference_chgnet, **kwargs):
    """chgnet's calculator over its 0.3.0 model, quietly (it prints its device)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return chgnet_ref.CHGNetCalculator(reference_chgnet, use_device="cpu", **kwargs)


def results_of(calculator, structure, **kwargs) -> dict:
    """``calculator.calculate`` on ``structure``'s atoms (``kwargs``: task=), its results."""
    calculator.calculate(AseAtomsAdaptor.get_atoms(structure), **kwargs)
    return dict(calculator.results)


def test_crystal_fea_is_float32_as_the_reference(
    chgnet_ref, reference_chgnet, compat_model, limno2
):
    ours = results_of(CHGNetCalculator(compat_model, use_device="cpu"), limno2)
    theirs = results_of(reference_calculator(chgnet_ref, reference_chgnet), limno2)
    assert ours["crystal_fea"].dtype == theirs["crystal_fea"].dtype == np.float32
    assert {key: np.asarray(ours[key]).dtype for key in theirs} == {
        key: np.asarray(value).dtype for key, value in theirs.items()
    }
    gap = np.abs(ours["crystal_fea"] - theirs["crystal_fea"]).max()
    assert gap <= EXTRA["crystal_fea"]


def test_crystal_fea_of_a_double_model_is_float64(compat_model, limno2):
    double = type(compat_model).from_dict(compat_model.as_dict()).double()
    ours = results_of(CHGNetCalculator(double, use_device="cpu"), limno2)
    assert ours["crystal_fea"].dtype == ours["forces"].dtype == np.float64
    assert ours["crystal_fea"] == pytest.approx(
        results_of(CHGNetCalculator(compat_model, use_device="cpu"), limno2)["crystal_fea"],
        abs=EXTRA["crystal_fea"],
    )


#: chgnet's calculator results -> the prediction tolerance (per atom for the energy)
LIMITS = {"energy": "e", "free_energy": "e", "forces": "f", "stress": "s", "magmoms": "m"}


def assert_results_match(ours: dict, theirs: dict, n_atoms: int) -> None:
    """The same keys, float types and shapes, values within the parity tolerances."""
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        mine = ours[key]
        assert (type(mine), mine.dtype, mine.shape) == (type(value), value.dtype, value.shape), key
        limit = {**TOLERANCE, **EXTRA, "energies": EXTRA["site_energies"]}.get(LIMITS.get(key, key))
        limit *= n_atoms if key in ("energy", "free_energy") else 1
        assert np.abs(mine - value).max() <= limit, key


@pytest.mark.parametrize("site_energies", [False, True])
@pytest.mark.parametrize("task", ["e", "ef", "em", "efs", "efsm"])
def test_calculate_fills_the_results_the_task_asks_as_the_reference(
    chgnet_ref, reference_chgnet, compat_model, limno2, task, site_energies
):
    options = {"return_site_energies": site_energies}
    ours = results_of(CHGNetCalculator(compat_model, use_device="cpu", **options), limno2,
                      task=task)  # fmt: skip
    theirs = results_of(
        reference_calculator(chgnet_ref, reference_chgnet, **options), limno2, task=task
    )
    assert_results_match(ours, theirs, len(limno2))


@pytest.fixture
def forward_calls(compat_model, monkeypatch):
    """The keyword arguments of every ``CHGNet.forward`` call in the test."""
    cls = type(compat_model)
    original = cls.forward
    calls: list[dict] = []

    def spy(self, batch, **kwargs):
        calls.append(kwargs)
        return original(self, batch, **kwargs)

    monkeypatch.setattr(cls, "forward", spy)
    return calls


@pytest.mark.parametrize(
    ("task", "forces", "stress"),
    [("e", False, False), ("em", False, False), ("ef", True, False), ("efs", True, True),
     ("efsm", True, True)],
)  # fmt: skip
def test_calculate_computes_forces_and_stress_only_when_the_task_asks(
    compat_model, limno2, forward_calls, task, forces, stress
):
    results_of(CHGNetCalculator(compat_model, use_device="cpu"), limno2, task=task)
    assert len(forward_calls) == 1
    assert (forward_calls[0]["compute_forces"], forward_calls[0]["compute_stress"]) == (
        forces,
        stress,
    )


def test_later_calls_keep_results_of_the_same_atoms_as_the_reference(
    chgnet_ref, reference_chgnet, compat_model, limno2
):
    atoms = AseAtomsAdaptor.get_atoms(limno2)
    ours = CHGNetCalculator(compat_model, use_device="cpu")
    theirs = reference_calculator(chgnet_ref, reference_chgnet)
    for calculator in (ours, theirs):
        calculator.calculate(atoms, task="efsm")
        calculator.calculate(atoms, task="e")
    assert_results_match(ours.results, theirs.results, len(limno2))
    # ASE asks again for what is missing (task "efsm"), as of the reference's
    for calculator in (ours, theirs):
        calculator.reset()
        calculator.calculate(atoms, task="e")
        atoms.calc = calculator
        atoms.get_forces()
    assert_results_match(ours.results, theirs.results, len(limno2))
    # other atoms: the earlier results are not theirs (the reference kept them, stale)
    moved = atoms.copy()
    moved.positions[0] += 0.1
    ours.calculate(moved, task="e")
    assert sorted(ours.results) == ["crystal_fea", "energy", "free_energy"]


def test_an_unknown_task_is_refused_as_by_the_reference(
    chgnet_ref, reference_chgnet, compat_model, limno2
):
    atoms = AseAtomsAdaptor.get_atoms(limno2)
    with pytest.raises(ValueError, match="Invalid task='fs'") as theirs:
        reference_calculator(chgnet_ref, reference_chgnet).calculate(atoms, task="fs")
    with pytest.raises(ValueError, match="Invalid task='fs'") as ours:
        CHGNetCalculator(compat_model, use_device="cpu").calculate(atoms, task="fs")
    assert str(ours.value) == str(theirs.value)


def test_free_energy_is_in_the_results_but_not_implemented_as_by_the_reference(
    chgnet_ref, reference_chgnet, compat_model, limno2, tmp_path
):
    from ase.calculators.calculator import PropertyNotImplementedError
    from ase.io.trajectory import Trajectory

    ours = CHGNetCalculator(compat_model, use_device="cpu")
    theirs = reference_calculator(chgnet_ref, reference_chgnet)
    assert sorted(ours.implemented_properties) == sorted(theirs.implemented_properties)
    frames = []
    for calculator in (ours, theirs):
        atoms = AseAtomsAdaptor.get_atoms(limno2)
        atoms.calc = calculator
        energy = atoms.get_potential_energy()
        assert calculator.results["free_energy"] == energy
        with pytest.raises(PropertyNotImplementedError, match="free_energy"):
            atoms.get_potential_energy(force_consistent=True)
        atoms.get_stress()
        path = str(tmp_path / f"{len(frames)}.traj")
        with Trajectory(path, "w") as trajectory:
            trajectory.write(atoms)
        with Trajectory(path) as trajectory:
            frames.append(sorted(trajectory[0].calc.results))
    assert frames[0] == frames[1]
    assert "free_energy" not in frames[0]


@pytest.mark.parametrize("ase_filter", ["FrechetCellFilter", "ExpCellFilter", "UnitCellFilter"])
@pytest.mark.parametrize("optimizer", ["FIRE", "BFGSLineSearch"])
def test_cell_relaxations_run_without_a_force_consistent_energy_as_the_references(
    chgnet_ref, reference_chgnet, compat_model, limno2, ase_filter, optimizer
):
    """ASE's optimizers and filters ask for ``free_energy`` first; neither calculator
    implements it, both relax the same (BFGSLineSearch's line search reads the energy)."""
    from fastchgnet.compat import StructOptimizer

    strained = limno2.copy()
    strained.apply_strain(0.03)
    relaxed = []
    for relaxer in (
        StructOptimizer(compat_model, optimizer_class=optimizer, use_device="cpu"),
        chgnet_ref.StructOptimizer(reference_chgnet, optimizer_class=optimizer, use_device="cpu"),
    ):
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # ExpCellFilter and UnitCellFilter are deprecated
            relaxed.append(relaxer.relax(strained, steps=5, ase_filter=ase_filter, verbose=False))
    ours, theirs = (result["trajectory"] for result in relaxed)
    assert len(ours) == len(theirs) > 1
    gap = np.abs(np.array(ours.energies) - np.array(theirs.energies)).max()
    assert gap <= 10 * TOLERANCE["e"] * len(limno2)
    cells = [result["final_structure"].lattice.matrix for result in relaxed]
    assert np.abs(cells[0] - cells[1]).max() < 1e-3
