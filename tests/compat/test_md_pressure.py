"""compat ``MolecularDynamics`` takes the pressures chgnet takes: a number, or for
Nosé-Hoover a Voigt 6-vector (ASE NPT's ``externalstress``). The 6-vector failed in
``math.isfinite`` with "only 0-dimensional arrays can be converted to Python scalars"."""

from __future__ import annotations

import numpy as np
import pytest

from fastchgnet.compat import MolecularDynamics
from fastchgnet.md.settings import checked_integrator

NOSE_HOOVER_NPT = {"ensemble": "npt", "thermostat": "Nose-Hoover", "bulk_modulus": 100.0}


@pytest.mark.parametrize(
    "pressure", [np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), [0.1, 0.1, 0.1, 0.0, 0.0, 0.0]]
)
def test_nose_hoover_npt_runs_with_a_voigt_pressure(compat_model, limno2, pressure):
    md = MolecularDynamics(
        limno2.copy(), model=compat_model, compiled=False, pressure=pressure, **NOSE_HOOVER_NPT
    )
    md.run(2)
    assert np.isfinite(md.atoms.get_potential_energy())


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({**NOSE_HOOVER_NPT, "pressure": np.eye(3)}, r"a number or a 6-vector .* shape \(3, 3\)"),
        ({**NOSE_HOOVER_NPT, "pressure": [1.0, np.nan, 1, 0, 0, 0]}, "need a finite pressure"),
        (
            {"ensemble": "npt", "thermostat": "NPT_Berendsen", "bulk_modulus": 100.0,
             "pressure": np.ones(6)},
            r"need pressure as a number in GPa, got shape \(6,\)",
        ),
    ],
)  # fmt: skip
def test_a_pressure_of_another_shape_is_refused_in_one_line(compat_model, limno2, options, says):
    with pytest.raises(ValueError, match=says) as caught:
        MolecularDynamics(limno2.copy(), model=compat_model, compiled=False, **options)
    assert "\n" not in str(caught.value)


def test_run_md_settings_still_take_a_number_and_refuse_a_vector():
    assert checked_integrator("npt", "berendsen", 300.0, 1.0, pressure=1.0) == ("npt", "berendsen")
    with pytest.raises(ValueError, match="need pressure as a number"):
        checked_integrator("npt", "berendsen", 300.0, 1.0, pressure=np.ones(6))
