"""compat ``MolecularDynamics`` checks its settings as ``run_md`` does (``checked_integrator``):
temperature=-5 failed as a "non-finite coordinates" StructureError, timestep=0 as a
ZeroDivisionError traceback."""

from __future__ import annotations

import pytest

from fastchgnet.compat import MolecularDynamics


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"temperature": -5}, "need a finite temperature >= 0 K, got -5"),
        ({"temperature": float("inf")}, "need a finite temperature >= 0 K, got inf"),
        ({"timestep": 0}, "need a finite timestep > 0 fs, got 0"),
        ({"taut": -1.0}, "need taut > 0, got -1.0"),
        ({"starting_temperature": -1.0}, "need starting_temperature >= 0 K"),
        ({"ensemble": "npt", "pressure": float("nan")}, "need a finite pressure"),
    ],
)
def test_bad_settings_are_refused_in_one_line_before_anything_runs(
    compat_model, limno2, settings, says
):
    options = {"ensemble": "nvt", "thermostat": "Berendsen"} | settings
    if options["ensemble"] == "npt":
        options |= {"thermostat": "Berendsen_inhomogeneous", "bulk_modulus": 100.0}
    with pytest.raises(ValueError, match=says):
        MolecularDynamics(limno2.copy(), model=compat_model, compiled=False, **options)


@pytest.mark.parametrize(
    "options",
    [
        {"ensemble": "npt", "thermostat": "Nose-Hoover", "bulk_modulus": 100.0},
        {
            "ensemble": "nvt",
            "thermostat": "Berendsen",
            "temperature": 0.0,
            "starting_temperature": 300.0,
        },
    ],
)
def test_settings_the_reference_takes_are_taken(compat_model, limno2, options):
    """The check refused what the reference runs: its NPT Nose-Hoover takes bulk_modulus
    (its barostat's pfactor), and its Berendsen quenches at 0 K."""
    md = MolecularDynamics(limno2.copy(), model=compat_model, compiled=False, **options)
    md.run(2)
    assert md.atoms.get_potential_energy() < 0
