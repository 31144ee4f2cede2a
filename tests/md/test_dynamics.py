"""Molecular dynamics: NVE conserves energy to the integrator's own error (which shrinks as dt^2),
every thermostat brings a hot crystal to its temperature (and plain NVE does not), every barostat
shrinks the cell under pressure and grows it under tension, frames and logs are written at the
log interval, stochastic runs repeat with their seed.

The physics checks run on diamond Si (8 atoms, the reference 0.3.0 weights, one thread): a
crystal with zero forces by symmetry, so what moves is heat and pressure, not a relaxation."""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.io import read
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from fastchgnet.md.calculator import Calculator
from fastchgnet.md.dynamics import make_integrator, run_md
from fastchgnet.md.relax import relax
from fastchgnet.md.settings import THERMOSTATS
from tests.md.conftest import CountingPotential

TARGET_K = 300.0  # thermostat target
START_K = 1500.0  # exact kinetic temperature of the thermostat runs' first step
BAND = 0.25  # a thermostat's mean temperature after equilibrating lies within 25% of TARGET_K
BAROSTAT_RUNS = {"berendsen": (20.0, 25), "nose-hoover": (200.0, 60)}  # taup (fs), steps


def silicon(model=None) -> Atoms:
    """Diamond Si, 8 atoms; with ``model``, its cell relaxed by the model (zero stress)."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    if model is None:
        return atoms
    relaxed = relax(atoms, model, fmax=0.01, steps=100).atoms
    relaxed.calc = None
    return relaxed


def total_energies(model, timestep: float, duration: float) -> np.ndarray:
    """Total energy per atom (eV) at every step of NVE on Si8 from 300 K, ``duration`` fs."""
    atoms = silicon()
    atoms.calc = Calculator(model)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    dyn = make_integrator(atoms, "nve", timestep=timestep)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy() / len(atoms)), interval=1)
    dyn.run(round(duration / timestep))
    return np.array(energies)


def test_nve_energy_error_is_the_integrators_and_shrinks_as_dt_squared(model):
    """Velocity Verlet keeps a shadow energy: the total energy fluctuates by O(dt^2) and does not
    drift. Measured on Si8 at 300 K over 100 fs (float32 and float64 give the same numbers, so
    float32 rounding is far below this): peak-to-peak 1.2e-4 eV/atom at 2 fs, 2.7e-5 at 1 fs,
    7.6e-6 at 0.5 fs. The bound, 1e-4 eV/atom at 1 fs, is ~4x the measurement and 0.26% of the
    thermal energy 3/2 kT (0.039 eV at 300 K). Forces 2% off the energy's gradient give 4.5e-4 at
    1 fs and an error that no longer shrinks with dt; both checks catch that."""
    coarse, fine = (np.ptp(total_energies(model, dt, duration=100.0)) for dt in (2.0, 1.0))
    assert fine < 1e-4
    assert coarse / fine > 2.5  # dt^2 gives 4; a force/energy mismatch gives ~1


def mean_temperature(model, ensemble: str, thermostat: str, log_path) -> float:
    """Mean temperature (K) of steps 80-200 of a 2 fs run on Si8 started at exactly START_K,
    with target TARGET_K and coupling time 20 fs, read from run_md's log."""
    atoms = silicon()
    thermalize_momenta(atoms, temperature_K=START_K, rng=np.random.default_rng(0))
    Stationary(atoms)
    atoms.set_momenta(atoms.get_momenta() * np.sqrt(START_K / atoms.get_temperature()))
    coupling = {} if ensemble == "nve" else {"taut": 20.0}
    run_md(
        atoms,
        model,
        ensemble=ensemble,
        thermostat=thermostat,
        temperature=TARGET_K,
        timestep=2.0,
        steps=200,
        loginterval=4,
        logfile=log_path,
        progress=False,
        seed=0,
        **coupling,
    )
    temperatures = [float(line.split()[-1]) for line in log_path.read_text().splitlines()[1:]]
    assert len(temperatures) == 51  # steps 0, 4, ..., 200
    return float(np.mean(temperatures[20:]))


@cache
def nve_mean_temperature(model) -> float:
    """The negative control: the same run and measurement without a thermostat (computed once
    per model; from 1500 K a harmonic crystal settles near half of it by equipartition)."""
    with tempfile.TemporaryDirectory() as folder:
        return mean_temperature(model, "nve", "none", Path(folder) / "nve.log")


def holds_target(temperature: float) -> bool:
    return abs(temperature - TARGET_K) < BAND * TARGET_K


@pytest.mark.parametrize("thermostat", THERMOSTATS["nvt"])
def test_thermostat_brings_a_hot_crystal_to_its_temperature(model, thermostat, tmp_path):
    """Measured means (K) of steps 80-200: Nose-Hoover 325, Langevin 324, Berendsen 302,
    Bussi 255; without a thermostat 720. A thermostat aiming elsewhere, or none, leaves the
    band 300 K +- 25%."""
    held = mean_temperature(model, "nvt", thermostat, tmp_path / "md.log")
    assert holds_target(held), f"{thermostat}: mean {held:.0f} K, target {TARGET_K:.0f} K"
    free = nve_mean_temperature(model)
    assert not holds_target(free), f"without a thermostat the run also ends at {free:.0f} K"


@pytest.mark.parametrize("barostat", THERMOSTATS["npt"])
def test_npt_pressure_shrinks_the_cell_and_tension_grows_it(model, barostat):
    """``pressure`` is the external pressure in GPa, positive compresses (ASE's convention, and
    the model's stress, CHGNet's sign, is positive under tension). From the model's zero-stress
    Si8 at 50 K, measured: Berendsen (taup 20 fs, 25 steps of 2 fs) -4.5% volume at +5 GPa and
    +1.8% at -1 GPa; MTK (taup 200 fs, 60 steps; shorter taup is unstable for 8 atoms) -5.2%
    and +3.8%. A pressure read in kbar would move the volume by a tenth of that, a flipped sign
    the other way."""
    taup, steps = BAROSTAT_RUNS[barostat]
    start = silicon(model)

    def strain(pressure: float) -> float:
        final = run_md(
            start,
            model,
            ensemble="npt",
            thermostat=barostat,
            temperature=50.0,
            timestep=2.0,
            steps=steps,
            pressure=pressure,
            taup=taup,
            bulk_modulus=100.0 if barostat == "berendsen" else None,
            progress=False,
            seed=0,
        )
        return final.get_volume() / start.get_volume() - 1

    assert strain(+5.0) < -0.02
    assert strain(-1.0) > 0.005


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


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"temperature": -10.0}, "temperature >= 0 K, got -10.0"),
        ({"timestep": 0.0}, "timestep > 0 fs"),
        ({"thermostat": "langevin", "ensemble": "npt"}, "'langevin' for npt: use one of"),
        ({"ensemble": "nph"}, "ensemble 'nph': use one of nve, nvt, npt"),
        ({"starting_temperature": -5.0}, "starting_temperature >= 0 K, got -5.0"),
        ({"temperature": float("nan")}, "temperature >= 0 K, got nan"),
        ({"ensemble": "npt", "thermostat": "berendsen", "bulk_modulus": 0.0}, "bulk_modulus > 0"),
        ({"taut": -1.0}, "need taut > 0, got -1.0"),
        ({"friction": -0.1, "thermostat": "langevin"}, "need friction >= 0"),
        ({"pressure": float("inf"), "ensemble": "npt"}, "need a finite pressure"),
        ({"tdamp": 10.0}, r"unknown MD setting\(s\) \['tdamp'\]"),
    ],
)
def test_bad_md_settings_are_refused_before_the_model_runs(model, small_crystals, settings, says):
    """A negative temperature used to fail only after the first force call, the compile
    decision's timed calls and the thermalisation (with numpy's warning on the way)."""
    counted = CountingPotential(model)
    with pytest.raises(ValueError, match=says):
        run_md(small_crystals[0], counted, steps=2, progress=False, **settings)
    assert counted.calls == []


def test_npt_asks_the_model_for_forces_and_stress_in_one_call_per_step(model, small_crystals):
    counted = CountingPotential(model)
    calls = counted.calls
    run_md(small_crystals[1], counted, ensemble="npt", steps=4, progress=False, seed=0)
    assert len(calls) == 4 + 1
    assert all(call["stress"] for call in calls)


@pytest.mark.parametrize(("thermostat", "kelvin"), [("nose-hoover", 500.0), ("langevin", 80.0)])
def test_run_starts_at_exactly_the_starting_temperature_without_drift(
    model, small_crystals, thermostat, kelvin
):
    """The drawn velocities were left as drawn: a 3-atom cell asked for 500 K started at
    whatever the draw gave. Now ``get_temperature()`` reads it exactly, with ASE's count of
    degrees of freedom (Langevin's FixCom takes 3), and the same seed draws the same momenta."""
    crystal = next(atoms for atoms in small_crystals if len(atoms) > 2)

    def start(seed: int) -> Atoms:
        return run_md(
            crystal, model, thermostat=thermostat, starting_temperature=kelvin, steps=0,
            progress=False, seed=seed, compiled=False,
        )  # fmt: skip

    first, again, other = start(3), start(3), start(4)
    assert first.get_temperature() == pytest.approx(kelvin, rel=1e-12)
    assert other.get_temperature() == pytest.approx(kelvin, rel=1e-12)
    np.testing.assert_allclose(first.get_momenta().sum(axis=0), 0.0, atol=1e-12)
    np.testing.assert_array_equal(first.get_momenta(), again.get_momenta())
    assert not np.allclose(first.get_momenta(), other.get_momenta())
    fixed = sum(c.get_removed_dof(first) for c in first.constraints)
    assert fixed == (3 if thermostat == "langevin" else 0)


def test_start_momenta_at_zero_kelvin_or_on_one_atom_stays_finite():
    from ase.constraints import FixCom

    from fastchgnet.md.velocities import start_momenta

    atoms = bulk("Cu", "fcc", a=3.6)
    atoms.set_constraint(FixCom())  # one atom with its centre of mass fixed: nothing can move
    start_momenta(atoms, 300.0, seed=0)
    np.testing.assert_array_equal(atoms.get_momenta(), 0.0)
    crystal = silicon()
    start_momenta(crystal, 0.0, seed=0)
    np.testing.assert_array_equal(crystal.get_momenta(), 0.0)
    alone = crystal[:1]  # one free atom keeps its drift: 3 degrees of freedom at 300 K
    start_momenta(alone, 300.0, seed=0)
    assert alone.get_temperature() == pytest.approx(300.0, rel=1e-12)


def test_thermostat_noise_and_starting_momenta_are_independent_streams(
    model, small_crystals, monkeypatch
):
    """One seed gave both generators: Langevin's first random forces were the very normals
    the starting momenta were drawn from. Now they come from two spawned streams."""
    import fastchgnet.md.dynamics as dynamics

    seeds = {}
    draw, build = dynamics.start_momenta, dynamics.make_integrator

    def recording_draw(atoms, temperature, seed=None):
        seeds["momenta"] = seed
        return draw(atoms, temperature, seed)

    def recording_build(*args, **kwargs):
        seeds["thermostat"] = kwargs["seed"]
        return build(*args, **kwargs)

    monkeypatch.setattr(dynamics, "start_momenta", recording_draw)
    monkeypatch.setattr(dynamics, "make_integrator", recording_build)
    crystal = next(atoms for atoms in small_crystals if len(atoms) > 2)
    dynamics.run_md(
        crystal, model, thermostat="langevin", starting_temperature=300.0, steps=1,
        progress=False, seed=5, compiled=False,
    )  # fmt: skip
    first = np.random.default_rng(seeds["momenta"]).standard_normal(6)
    noise = np.random.default_rng(seeds["thermostat"]).standard_normal(6)
    assert not np.allclose(first, noise)


def test_npt_log_carries_the_stress_and_nvt_log_does_not(model, small_crystals, tmp_path):
    """The NPT log had no way to watch the barostat (no stress or pressure column); the
    stress it computes every step is now logged (GPa, ASE's sign)."""
    crystal = next(atoms for atoms in small_crystals if len(atoms) > 2)
    for ensemble in ("npt", "nvt"):
        log = tmp_path / f"{ensemble}.log"
        extra = {"bulk_modulus": 100.0} if ensemble == "npt" else {}
        run_md(
            crystal, model, ensemble=ensemble, thermostat="berendsen", steps=4, loginterval=2,
            logfile=log, progress=False, seed=0, compiled=False, **extra,
        )  # fmt: skip
        header, *rows = log.read_text().splitlines()
        assert ("stress [GPa]" in header) is (ensemble == "npt")
        assert len(rows[0].split()) == (11 if ensemble == "npt" else 5)


def test_a_run_driven_to_a_geometry_the_model_cannot_take_says_it_diverged(model, tmp_path) -> None:
    # it said "structure (Si8): 8 isolated atom(s) ...", as if the input were bad, with no
    # word of the step or of the frames already written
    from fastchgnet.md.outputs import MDDiverged

    trajectory = tmp_path / "md.extxyz"
    with pytest.raises(MDDiverged) as stopped:
        run_md(
            bulk("Si", "diamond", a=5.43, cubic=True),
            model,
            ensemble="npt",
            thermostat="berendsen",
            pressure=-1e6,  # GPa: tension no cell survives
            bulk_modulus=100.0,
            steps=20,
            trajectory=trajectory,
            progress=False,
            compiled=False,
        )
    line = str(stopped.value)
    assert line.startswith("md diverged at step 1 of 20: structure (Si8): 8 isolated atom(s)")
    assert line.endswith("1 frame(s) written")
    assert stopped.value.frames == len(read(trajectory, index=":")) == 1
    assert "\n" not in line
