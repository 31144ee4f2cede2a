"""Langevin's friction follows a given taut (1/taut) or --friction, and a setting the chosen
ensemble and thermostat do not use is refused in one line, in the API and the command."""

from __future__ import annotations

import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT

from fastchgnet.cli import main
from fastchgnet.md.integrators import make_integrator


def _copper():
    atoms = bulk("Cu", "fcc", a=3.6)
    atoms.calc = EMT()
    return atoms


def test_langevin_friction_is_one_over_a_given_taut():
    dyn = make_integrator(_copper(), "nvt", "langevin", taut=50.0)
    assert dyn.fr == pytest.approx(1 / 50.0 / units.fs)


def test_langevin_takes_friction_in_inverse_fs_and_keeps_its_default():
    assert make_integrator(_copper(), "nvt", "langevin", friction=0.05).fr == pytest.approx(
        0.05 / units.fs
    )
    assert make_integrator(_copper(), "nvt", "langevin").fr == pytest.approx(0.01 / units.fs)


@pytest.mark.parametrize(
    ("ensemble", "thermostat", "settings", "named"),
    [
        ("nvt", "nose-hoover", {"pressure": 5.0, "bulk_modulus": 50.0}, "pressure, bulk_modulus"),
        ("npt", "nose-hoover", {"bulk_modulus": 50.0}, "bulk_modulus"),
        ("nvt", "bussi", {"friction": 0.1}, "friction"),
        ("nve", "none", {"taut": 10.0}, "taut"),
    ],
)
def test_a_setting_the_integrator_does_not_use_is_refused(ensemble, thermostat, settings, named):
    with pytest.raises(ValueError, match=f"^{named} .*not used by {ensemble}"):
        make_integrator(_copper(), ensemble, thermostat, **settings)


def test_taut_and_friction_together_are_refused():
    with pytest.raises(ValueError, match="give one"):
        make_integrator(_copper(), "nvt", "langevin", taut=50.0, friction=0.02)


@pytest.mark.parametrize(
    "extra",
    [
        ["--ensemble", "nvt", "--pressure", "5", "--bulk-modulus", "50"],
        ["--ensemble", "npt", "--thermostat", "nose-hoover", "--bulk-modulus", "50"],
        ["--thermostat", "langevin", "--taut", "50", "--friction", "0.02"],
    ],
)
def test_md_command_refuses_settings_its_integrator_does_not_use(tmp_path, capsys, extra):
    from ase.io import write

    write(tmp_path / "cu.extxyz", bulk("Cu", "fcc", a=3.6))
    argv = ["md", str(tmp_path / "cu.extxyz"), "-o", str(tmp_path / "md.extxyz"), *extra]
    assert main(argv) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("fastchgnet md: error: ")
    assert not (tmp_path / "md.extxyz").exists()


@pytest.mark.parametrize("option", ["trajectory", "logfile"])
def test_run_md_names_a_missing_output_folder_before_it_loads_or_runs_anything(
    tmp_path, option, monkeypatch
):
    # a bare FileNotFoundError came after the model load, the compile decision and a step
    from fastchgnet.md import dynamics

    monkeypatch.setattr(dynamics, "as_atoms", lambda *a: pytest.fail("the run started"))
    path = tmp_path / "nodir" / "x.traj"
    with pytest.raises(FileNotFoundError, match=f"{option} {path}: the folder .*nodir does not"):
        dynamics.run_md(bulk("Cu"), object(), steps=2, **{option: path})


def test_the_compat_md_refuses_a_berendsen_quench_from_rest_not_nan(model):
    # ASE's Berendsen scaling is 0 K / 0 K: every position NaN after the first step, then
    # "non-finite coordinates or lattice", which did not name the cause (run_md refuses a
    # Berendsen target of 0 K itself)
    from fastchgnet.compat import MolecularDynamics

    md = MolecularDynamics(bulk("Cu", cubic=True), model=model, ensemble="nvt",
                           thermostat="Berendsen", temperature=0, compiled=False)  # fmt: skip
    with pytest.raises(ValueError, match="Berendsen thermostat at 0 K cannot start from atoms"):
        md.run(2)
    heated = MolecularDynamics(bulk("Cu", cubic=True), model=model, ensemble="nvt",
                               thermostat="Berendsen", temperature=300, compiled=False)  # fmt: skip
    heated.run(1)  # from rest to 300 K: ASE's clipped scaling, as the reference runs it
