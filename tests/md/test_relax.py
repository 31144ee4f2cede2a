"""Relaxation: batched lockstep follows the same path as ASE per structure, converged means
forces below fmax, cells relax only when asked, trajectories are written."""

from __future__ import annotations

import numpy as np
import pytest
from ase.filters import FrechetCellFilter
from ase.io import read

from fastchgnet.md.relax import relax
from tests.md.conftest import CountingPotential


def test_batched_relaxation_follows_the_per_structure_path(model, small_crystals):
    crystals = small_crystals[1:3]
    batched = relax(crystals, model, steps=15)
    one_by_one = relax(crystals, model, steps=15, batched=False)
    for ours, ase_run in zip(batched, one_by_one, strict=True):
        assert ours.steps == ase_run.steps
        assert ours.converged == ase_run.converged
        assert ours.energy_per_atom == pytest.approx(ase_run.energy_per_atom, abs=1e-4)


def test_converged_structures_have_forces_and_cell_forces_below_fmax(model, small_crystals):
    for result in relax(small_crystals[:2], model, fmax=0.1, steps=200):
        assert result.converged
        forces = FrechetCellFilter(result.atoms).get_forces()
        assert np.sqrt((forces**2).sum(axis=1)).max() < 0.1


def test_relaxation_lowers_the_energy(model, small_crystals):
    atoms = small_crystals[4]
    start = model.predict_structure(atoms)["e"]
    assert relax(atoms, model, steps=30).energy_per_atom < start


def test_fixed_cell_relaxation_keeps_the_cell(model, small_crystals):
    atoms = small_crystals[1]
    result = relax(atoms, model, relax_cell=False, optimizer="BFGS", steps=20)
    np.testing.assert_array_equal(result.atoms.cell.array, atoms.cell.array)
    assert "stress" not in result.atoms.calc.results


def test_input_structures_are_not_modified(model, small_crystals):
    atoms = small_crystals[2]
    before = atoms.positions.copy()
    relax(atoms, model, steps=5)
    np.testing.assert_array_equal(atoms.positions, before)


def test_trajectory_holds_every_step_of_every_structure(model, small_crystals, tmp_path):
    path = tmp_path / "relax.extxyz"
    results = relax(small_crystals[:2], model, steps=5, trajectory=path)
    frames = read(path, index=":")
    assert len(frames) == sum(r.steps + 1 for r in results)
    assert [f.info["structure"] for f in frames] == sorted(f.info["structure"] for f in frames)
    last = [f for f in frames if f.info["structure"] == 1][-1]
    assert last.get_potential_energy() == pytest.approx(results[1].energy, rel=1e-6)


def test_pymatgen_structures_come_back_with_magmoms(model):
    from fastchgnet.data.random_crystals import varied_structures

    result = relax(varied_structures(1, seed=4, max_atoms=6)[0], model, steps=3)
    assert "magmom" in result.structure.site_properties


def test_unknown_optimizer_is_rejected(model, small_crystals):
    with pytest.raises(ValueError, match="optimizer 'LBFGS'"):
        relax(small_crystals[0], model, optimizer="LBFGS")


def test_small_batch_size_gives_the_same_relaxation(model, small_crystals):
    crystals = small_crystals[1:3]
    together = relax(crystals, model, steps=5)
    in_ones = relax(crystals, model, steps=5, batch_size=1)
    for a, b in zip(together, in_ones, strict=True):
        assert a.energy == pytest.approx(b.energy, abs=1e-4)
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-5)


def cosine(a, b) -> float:
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_direct_model_relaxes_through_its_force_and_stress_heads(small_crystals):
    """A random direct model's energy is not the potential of its forces, so the evidence is the
    step itself: FIRE's first step moves along the cell filter's forces, i.e. the atoms along the
    force head and the cell's log-strain along minus the stress head (both read here through
    ``predict_structure``, not the relaxation's calculator). Convergence asks both heads."""
    import torch
    from scipy.linalg import logm

    from fastchgnet import FastCHGNet
    from fastchgnet.testing import randomize_model

    torch.manual_seed(0)
    direct = randomize_model(FastCHGNet(forces="direct"), seed=6).eval()
    crystals = [small_crystals[1], small_crystals[4]]
    firsts = relax(crystals, direct, steps=1, fmax=1e-6)
    for atoms, first in zip(crystals, firsts, strict=True):
        heads = direct.predict_structure(atoms)
        assert (first.steps, first.converged) == (1, False)
        step = first.atoms.get_scaled_positions(wrap=False) - atoms.get_scaled_positions(wrap=False)
        moved = step @ atoms.cell.array  # in the undeformed frame
        log_strain = logm(np.linalg.solve(atoms.cell.array, first.atoms.cell.array).T).real
        # measured: atoms move >= 5e-4 Å and the log-strain is >= 8e-3 in the first step
        assert np.abs(moved).max() > 1e-5
        assert np.abs(log_strain).max() > 1e-4
        assert cosine(moved, heads["f"]) > 0.9999
        assert cosine(log_strain, -np.asarray(heads["s"])) > 0.9999

    atoms = crystals[0]
    force_fmax = np.linalg.norm(direct.predict_structure(atoms)["f"], axis=1).max()
    fixed_cell = relax(atoms, direct, fmax=2 * force_fmax, steps=4, relax_cell=False)
    assert (fixed_cell.steps, fixed_cell.converged) == (0, True)  # the force head is below fmax
    with_cell = relax(atoms, direct, fmax=2 * force_fmax, steps=4)
    assert (with_cell.steps, with_cell.converged) == (4, False)  # the stress head is not


def test_cell_relaxation_calls_the_model_once_per_step(model, small_crystals):
    counted = CountingPotential(model)
    calls = counted.calls
    result = relax(small_crystals[1], counted, steps=4, batched=False)
    assert len(calls) == result.steps + 1
    assert all(call["stress"] for call in calls)


def test_compile_decision_times_the_second_call(model, small_crystals, monkeypatch):
    """Left to choose (compiled=None), batched relaxation prices compiling from an eager call
    after the first: the first is cold and would make compiling look cheap by comparison."""
    import sys

    relax_module = sys.modules["fastchgnet.md.relax"]  # the package exports the function
    loops = sys.modules["fastchgnet.md.relaxation"]  # the lockstep loop calls the model
    calls: list[int] = []
    decided_at: list[int] = []
    evaluate = loops.evaluate_graphs

    def counting(*args, **kwargs):
        calls.append(1)
        return evaluate(*args, **kwargs)

    def chooser(model, n_calls, stress, progress):
        def choose(seconds, graphs):
            decided_at.append(len(calls))
            assert seconds > 0
            assert len(graphs) == 3
            return None

        return choose

    monkeypatch.setattr(loops, "evaluate_graphs", counting)
    monkeypatch.setattr(relax_module, "_compile_chooser", chooser)
    relax(small_crystals[:3], model, fmax=0.05, steps=5, batch_size=3)
    assert decided_at == [2]


def test_relaxation_from_screened_neighbours_searches_no_more_and_ends_the_same(
    model, small_crystals
):
    from fastchgnet.data.graph import structure_name
    from fastchgnet.md.calculator import first_neighbours

    crystals = small_crystals[1:3]
    lists = [
        first_neighbours(model.config, atoms, structure_name(atoms, k))
        for k, atoms in enumerate(crystals)
    ]
    given = relax(crystals, model, steps=3, neighbours=lists)
    fresh = relax(crystals, model, steps=3)
    assert [neighbours.n_builds for neighbours in lists] == [1, 1]
    for ours, theirs in zip(given, fresh, strict=True):
        np.testing.assert_array_equal(ours.atoms.positions, theirs.atoms.positions)
        assert ours.energy == theirs.energy
    with pytest.raises(ValueError, match="neighbours: 1 for 2 structures; give one each"):
        relax(crystals, model, neighbours=lists[:1])


def test_a_calculator_refuses_neighbours_of_other_cutoffs(model):
    from fastchgnet.md.calculator import Calculator
    from fastchgnet.md.verlet_graph import VerletGraph

    with pytest.raises(ValueError, match=r"neighbours: cutoffs \(5.0, 3.0\) Å, but the model"):
        Calculator(model, neighbours=VerletGraph(5.0, 3.0))


def test_relax_batch_size_that_is_not_a_positive_int_is_one_line(model):
    from ase.build import bulk

    from fastchgnet.md.relax import relax

    crystals = [bulk("Si", "diamond", a=5.43)] * 2
    with pytest.raises(TypeError, match=r"batch_size must be an int >= 1, got 2\.5"):
        relax(crystals, model, batch_size=2.5)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        relax(crystals, model, batch_size=0)
