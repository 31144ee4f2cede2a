"""Molecular dynamics: energy is conserved in NVE, every ensemble and thermostat runs,
barostats move the cell, frames and logs are written at the log interval."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.io import read
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from fastchgnet.md.calculator import Calculator
from fastchgnet.md.dynamics import THERMOSTATS, make_integrator, run_md


def test_nve_conserves_total_energy(model, small_crystals):
    atoms = small_crystals[1]
    atoms.calc = Calculator(model)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    dyn = make_integrator(atoms, "nve", timestep=1.0)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy() / len(atoms)), interval=1)
    dyn.run(50)
    assert abs(energies[-1] - energies[0]) < 2e-3  # eV/atom over 50 fs at 300 K
    assert np.ptp(energies) < 5e-3


@pytest.mark.parametrize(
    ("ensemble", "thermostat"),
    [(e, t) for e, names in THERMOSTATS.items() for t in names],
)
def test_every_ensemble_and_thermostat_runs(model, small_crystals, ensemble, thermostat):
    final = run_md(
        small_crystals[1],
        model,
        ensemble=ensemble,
        thermostat=thermostat,
        temperature=300,
        timestep=1.0,
        steps=3,
        progress=False,
        seed=0,
    )
    assert np.isfinite(final.get_forces()).all()
    assert final.get_kinetic_energy() > 0


def test_npt_changes_the_volume_under_pressure(model, small_crystals):
    atoms = small_crystals[1]
    final = run_md(
        atoms,
        model,
        ensemble="npt",
        thermostat="berendsen",
        steps=5,
        pressure=5.0,
        taup=20.0,
        bulk_modulus=50.0,
        progress=False,
        seed=0,
    )
    assert final.get_volume() != pytest.approx(atoms.get_volume(), rel=1e-6)


def test_trajectory_and_log_are_written_every_log_interval(model, small_crystals, tmp_path):
    traj, log = tmp_path / "md.extxyz", tmp_path / "md.log"
    run_md(
        small_crystals[1],
        model,
        ensemble="nvt",
        thermostat="langevin",
        steps=6,
        loginterval=2,
        trajectory=traj,
        logfile=log,
        progress=False,
        seed=1,
    )
    frames = read(traj, index=":")
    assert len(frames) == 4  # steps 0, 2, 4, 6
    assert np.isfinite(frames[-1].get_forces()).all()
    assert len(log.read_text().splitlines()) == 1 + 4  # header + lines


def test_same_seed_gives_the_same_stochastic_run(model, small_crystals):
    runs = [
        run_md(small_crystals[1], model, thermostat="langevin", steps=3, progress=False, seed=7)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0].positions, runs[1].positions)


def test_timestep_is_taken_in_femtoseconds(model, small_crystals):
    atoms = small_crystals[0]
    atoms.calc = Calculator(model)
    assert make_integrator(atoms, "nve", timestep=2.0).dt == pytest.approx(2.0 * units.fs)


def test_unknown_thermostat_names_the_choices(model, small_crystals):
    atoms = small_crystals[0]
    atoms.calc = Calculator(model)
    with pytest.raises(ValueError, match="'andersen' for nvt: use one of"):
        make_integrator(atoms, "nvt", "andersen")


def test_npt_asks_the_model_for_forces_and_stress_in_one_call_per_step(model, small_crystals):
    calls = []

    def counted(batch, **kwargs):
        calls.append(kwargs)
        return model(batch, **kwargs)

    counted.config = model.config  # a Potential: config, parameters, eval, call
    counted.parameters = model.parameters
    counted.eval = model.eval
    run_md(small_crystals[1], counted, ensemble="npt", steps=4, progress=False, seed=0)
    assert len(calls) == 4 + 1
    assert all(call["compute_stress"] for call in calls)
