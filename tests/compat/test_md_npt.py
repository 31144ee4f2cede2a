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
