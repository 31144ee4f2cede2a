"""The cell filter of relaxations: ASE's FrechetCellFilter's results, with its 3x3 matrix
functions done once per geometry (the nine Fréchet derivatives together, logs of the
matrices it has just exponentiated taken from their exponents)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE
from scipy.linalg import expm, expm_frechet, logm

import fastchgnet.md.cell_filter as cell_filter
from fastchgnet.md.cell_filter import CachedFrechetCellFilter, frechet_derivatives


def strained_copper():
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 1, 1))
    strain = np.array([[0.04, 0.02, 0], [0, -0.03, 0.01], [0, 0, 0.02]])
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    atoms.positions += np.random.default_rng(0).normal(0, 0.05, atoms.positions.shape)
    atoms.calc = EMT()
    return atoms


def test_a_relaxation_through_the_filter_follows_ases_own_filter():
    ours, theirs = strained_copper(), strained_copper()
    ours_filter, theirs_filter = CachedFrechetCellFilter(ours), FrechetCellFilter(theirs)
    ours_opt, theirs_opt = FIRE(ours_filter, logfile=None), FIRE(theirs_filter, logfile=None)
    for _ in range(40):
        np.testing.assert_allclose(ours_filter.get_forces(), theirs_filter.get_forces(), atol=1e-9)
        np.testing.assert_allclose(
            ours_filter.get_positions(), theirs_filter.get_positions(), atol=1e-9
        )
        ours_opt.step()
        theirs_opt.step()
    np.testing.assert_allclose(ours.cell.array, theirs.cell.array, atol=1e-9)
    assert not np.allclose(ours.cell.array, strained_copper().cell.array, atol=1e-3)  # it moved


@pytest.mark.parametrize(
    ("optimizer", "settings"),
    [
        (BFGS, {}),
        (FIRE, {"scalar_pressure": 0.01, "exp_cell_factor": 3.0}),
        (FIRE, {"mask": [1, 1, 1, 0, 0, 0]}),
        (FIRE, {"hydrostatic_strain": True}),
        (FIRE, {"constant_volume": True}),
    ],
)
def test_the_filters_settings_and_optimizers_follow_ases_own_filter(optimizer, settings):
    ours, theirs = strained_copper(), strained_copper()
    ours_filter = CachedFrechetCellFilter(ours, **settings)
    theirs_filter = FrechetCellFilter(theirs, **settings)
    ours_opt, theirs_opt = (
        optimizer(ours_filter, logfile=None),
        optimizer(theirs_filter, logfile=None),
    )
    for _ in range(15):
        ours_opt.step()
        theirs_opt.step()
        np.testing.assert_allclose(ours_filter.get_forces(), theirs_filter.get_forces(), atol=1e-9)
    np.testing.assert_allclose(ours.cell.array, theirs.cell.array, atol=1e-9)
    np.testing.assert_allclose(ours_filter.stress, theirs_filter.stress, atol=1e-9)


def test_remembered_forces_follow_a_changed_pressure_at_the_same_geometry():
    atoms = strained_copper()
    ours, theirs = CachedFrechetCellFilter(atoms), FrechetCellFilter(atoms)
    before = ours.get_forces()
    ours.scalar_pressure = theirs.scalar_pressure = 0.05
    after = ours.get_forces()
    assert not np.allclose(before[-3:], after[-3:])
    np.testing.assert_allclose(after, theirs.get_forces(), atol=1e-12)


def test_an_exponential_changed_in_place_by_its_caller_is_not_taken_for_its_log():
    functions = cell_filter._MatrixFunctions()
    y = np.random.default_rng(3).normal(0, 0.05, (3, 3))
    exp_y = functions.expm(y)
    exp_y *= 1.5  # now log(exp_y) = y + log(1.5) I, found through the scale c
    np.testing.assert_allclose(functions.logm(exp_y), logm(exp_y), atol=1e-12)
    exp_y += np.diag([0.0, 0.0, 0.2])  # no longer a multiple: scipy's
    np.testing.assert_allclose(functions.logm(exp_y), logm(exp_y), atol=1e-12)


def test_the_filter_takes_scipys_log_only_at_the_start(monkeypatch):
    calls = []
    monkeypatch.setattr(cell_filter, "logm", lambda f: calls.append(1) or logm(f))
    atoms = strained_copper()
    optimizer = FIRE(CachedFrechetCellFilter(atoms), logfile=None)
    optimizer.run(fmax=1e-6, steps=30)
    assert optimizer.nsteps == 30
    assert len(calls) <= 2  # the first positions and forces, before any log was set


def test_the_nine_frechet_derivatives_together_equal_scipys_one_by_one():
    a = logm(np.eye(3) + np.random.default_rng(1).normal(0, 0.1, (3, 3)))
    together = frechet_derivatives(a)
    for k in range(9):
        direction = np.zeros((3, 3))
        direction.flat[k] = 1.0
        np.testing.assert_allclose(
            together[k], expm_frechet(a, direction, compute_expm=False), atol=1e-14
        )


def test_the_log_of_a_scaled_exponential_is_taken_from_its_exponent():
    functions = cell_filter._MatrixFunctions()
    y = np.log(8.0) * np.eye(3) + np.random.default_rng(2).normal(0, 0.05, (3, 3))
    f = functions.expm(y) / 8.0  # the forces' F, where the positions read 8 F
    np.testing.assert_allclose(functions.logm(f), logm(f), atol=1e-12)
    np.testing.assert_allclose(functions.logm(8.0 * f), logm(8.0 * f), atol=1e-12)


@pytest.mark.parametrize(
    ("y", "f"),
    [
        # a rotation by 3 rad: too near the branch cut for the shortcut
        (3.0 * np.array([[0, -1, 0], [1, 0, 0], [0, 0, 0.0]]), None),
        # by 4 rad: past it, Y is not the principal log of expm(Y)
        (4.0 * np.array([[0, -1, 0], [1, 0, 0], [0, 0, 0.0]]), None),
        # a matrix that is not a multiple of the last exponential
        (0.01 * np.ones((3, 3)), np.diag([1.0, 1.1, 1.2])),
    ],
)
def test_logs_outside_the_shortcut_are_scipys(monkeypatch, y, f):
    calls = []
    monkeypatch.setattr(cell_filter, "logm", lambda m: calls.append(1) or logm(m))
    functions = cell_filter._MatrixFunctions()
    f = functions.expm(y) if f is None else f
    np.testing.assert_allclose(functions.logm(f), logm(f), atol=1e-12)
    assert calls == [1]
    np.testing.assert_allclose(expm(functions.logm(f)), f, atol=1e-12)  # remembered: no call
    assert calls == [1]
