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


def test_nose_hoover_npt_runs_a_symmetric_3x3_pressure_as_its_voigt_6_vector(compat_model, limno2):
    stress = np.array([[1.0, 0.2, 0.0], [0.2, 0.8, -0.1], [0.0, -0.1, 1.2]])
    voigt = np.array([1.0, 0.8, 1.2, -0.1, 0.0, 0.2])  # xx, yy, zz, yz, xz, xy
    runs = []
    for pressure in (stress, voigt):
        md = MolecularDynamics(
            limno2.copy(), model=compat_model, compiled=False, pressure=pressure,
            **NOSE_HOOVER_NPT,
        )  # fmt: skip
        md.run(3)
        runs.append((md.atoms.get_positions(), md.atoms.get_cell().array))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=0, atol=1e-12)
    assert not np.allclose(runs[0][1], limno2.lattice.matrix)  # the cell moved


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({**NOSE_HOOVER_NPT, "pressure": np.ones((2, 3))}, r"a symmetric 3x3 .* shape \(2, 3\)"),
        (
            {**NOSE_HOOVER_NPT, "pressure": [[1, 0.5, 0], [0, 1, 0], [0, 0, 1]]},
            r"need a symmetric 3x3 pressure .* differ by up to 0.5 GPa",
        ),
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
