"""compat ``MolecularDynamics``: NPT without ``bulk_modulus`` fits one by ``EquationOfState``
and runs, as chgnet's; ``upper_triangular_cell`` is a method, as chgnet's."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from pymatgen.io.ase import AseAtomsAdaptor

from fastchgnet.compat import MolecularDynamics
from tests.compat.test_eos_and_utils import REFERENCE_BULK_MODULUS_GPA


def test_npt_without_bulk_modulus_fits_one_and_runs(compat_model, limno2, capsys):
    md = MolecularDynamics(
        limno2, model=compat_model, ensemble="npt", thermostat="Berendsen_inhomogeneous",
        timestep=1, compiled=False,
    )  # fmt: skip
    assert md.bulk_modulus == pytest.approx(REFERENCE_BULK_MODULUS_GPA, abs=0.05)
    assert "Completed bulk modulus calculation: k = 1.04e+02GPa" in capsys.readouterr().out
    md.run(2)
    assert np.isfinite(md.atoms.get_potential_energy())


def test_upper_triangular_cell_method_as_the_reference(chgnet_ref, compat_model, limno2, capsys):
    ours = MolecularDynamics(limno2, model=compat_model, ensemble="nve", compiled=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = chgnet_ref.CHGNet.load(use_device="cpu", verbose=False)
        theirs = chgnet_ref.MolecularDynamics(
            AseAtomsAdaptor.get_atoms(limno2), model=model, ensemble="nve", use_device="cpu"
        )
    capsys.readouterr()
    ours.upper_triangular_cell(verbose=True)
    theirs.upper_triangular_cell(verbose=True)
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["Transformed to upper triangular unit cell."] * 2
    np.testing.assert_allclose(ours.atoms.cell[:], theirs.atoms.cell[:], atol=1e-12)
    np.testing.assert_allclose(ours.atoms.positions, theirs.atoms.positions, atol=1e-10)


def quick_fit(cls, monkeypatch, steps: int = 10):
    """``cls.fit`` (an EquationOfState's) with at most ``steps`` relaxation steps: the fit
    MolecularDynamics makes, in a fraction of the time."""
    original = cls.fit

    def fit(self, atoms, **kwargs):
        return original(self, atoms, **(kwargs | {"steps": steps}))

    monkeypatch.setattr(cls, "fit", fit)


@pytest.mark.parametrize("thermostat", ["Berendsen_inhomogeneous", "Nose-Hoover"])
def test_a_fitted_bulk_modulus_is_a_float_with_unit_in_gpa_as_the_references(
    chgnet_ref, reference_chgnet, compat_model, limno2, monkeypatch, thermostat
):
    from chgnet.model import dynamics as reference_dynamics
    from pymatgen.core.units import FloatWithUnit

    from fastchgnet.compat.eos import EquationOfState

    quick_fit(reference_dynamics.EquationOfState, monkeypatch)
    quick_fit(EquationOfState, monkeypatch)
    options = {"ensemble": "npt", "thermostat": thermostat, "timestep": 1}
    ours, theirs = both_dynamics(chgnet_ref, reference_chgnet, compat_model, limno2, options)
    assert type(ours.bulk_modulus) is type(theirs.bulk_modulus) is FloatWithUnit
    assert str(ours.bulk_modulus.unit) == str(theirs.bulk_modulus.unit) == "GPa"
    assert ours.bulk_modulus == pytest.approx(theirs.bulk_modulus, abs=0.05)
    # the integrator's constants from it, as the reference's (plain floats)
    if thermostat == "Nose-Hoover":
        assert float(ours.dyn.pfactor_given) == pytest.approx(theirs.dyn.pfactor_given, rel=1e-3)
    else:
        assert ours.dyn.compressibility == pytest.approx(theirs.dyn.compressibility, rel=1e-3)
    ours.run(2)
    assert np.isfinite(ours.atoms.get_potential_energy())


def test_a_given_bulk_modulus_is_kept_as_given_as_by_the_reference(
    chgnet_ref, reference_chgnet, compat_model, limno2
):
    options = {"ensemble": "npt", "thermostat": "NPT_Berendsen", "bulk_modulus": 100}
    ours, theirs = both_dynamics(chgnet_ref, reference_chgnet, compat_model, limno2, options)
    assert type(ours.bulk_modulus) is type(theirs.bulk_modulus) is int
    assert ours.dyn.compressibility == theirs.dyn.compressibility


def both_dynamics(chgnet_ref, reference_chgnet, compat_model, structure, options):
    """(ours, the reference's) MolecularDynamics of ``structure`` with the same ``options``,
    eager, the reference's warnings silenced."""
    ours = MolecularDynamics(structure, model=compat_model, compiled=False, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = chgnet_ref.MolecularDynamics(
            AseAtomsAdaptor.get_atoms(structure), model=reference_chgnet, use_device="cpu",
            **options,
        )  # fmt: skip
    return ours, theirs
