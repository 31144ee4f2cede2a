"""D3 dispersion through torch-dftd: the D3 part against the dftd3 documentation's value, and
model + D3 energy, forces and stress against finite differences (float64)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.units import Hartree

pytest.importorskip("torch_dftd")

from fastchgnet.workflows.dispersion import d3_calculator, with_dispersion

#: water-peptide dimer (S66x8 system 4) of the dftd3 tutorial "Computing interaction energies"
#: (dftd3.readthedocs.io): PBE0-D3(BJ) dispersion energy -8.2944752821052e-3 Eh
DIMER = """O -3.2939688 0.4402024 0.1621802
H -3.8134112 1.2387332 0.2637577
H -2.3770466 0.7564365 0.1766203
C -0.6611637 -1.4159110 -0.1449409
H -0.0112009 -2.2770229 -0.2778563
H -1.3421397 -1.3384389 -0.9888061
H -1.2741806 -1.5547070 0.7420675
C 0.0935684 -0.1178981 -0.0123474
O -0.4831471 0.9573968 0.1442414
N 1.4442015 -0.2154008 -0.0769653
H 1.8451531 -1.1259348 -0.2064804
C 2.3124436 0.9365697 0.0324778
H 1.6759495 1.8048701 0.1672624
H 2.9780331 0.8451145 0.8885706
H 2.9069093 1.0659902 -0.8697814"""


def test_d3_part_matches_the_dftd3_documentation():
    rows = [line.split() for line in DIMER.splitlines()]
    atoms = Atoms([r[0] for r in rows], positions=[[float(x) for x in r[1:]] for r in rows])
    atoms.calc = d3_calculator(xc="pbe0", damping="bj")
    assert atoms.get_potential_energy() / Hartree == pytest.approx(-8.2944752821052e-3, abs=1e-8)


def test_model_plus_d3_matches_finite_differences(one_thread, reference_structures):
    from fastchgnet import FastCHGNet
    from fastchgnet.md.calculator import as_atoms

    model = FastCHGNet.from_reference("0.3.0").double()
    atoms = as_atoms(reference_structures[0])
    atoms.rattle(0.05, seed=1)
    atoms.calc = with_dispersion(model, cutoff=12.0)
    forces, stress = atoms.get_forces(), atoms.get_stress(voigt=False)
    d3_alone = atoms.copy()
    d3_alone.calc = d3_calculator(cutoff=12.0)
    assert abs(d3_alone.get_potential_energy()) > 0.05  # the D3 part is not negligible

    def energy(positions=None, cell=None) -> float:
        probe = atoms.copy()
        probe.calc = atoms.calc
        if cell is not None:
            probe.set_cell(cell, scale_atoms=True)
        if positions is not None:
            probe.positions = positions
        return probe.get_potential_energy()

    step = 1e-4
    for atom, axis in ((0, 0), (3, 1), (7, 2)):
        shifted = [atoms.positions.copy() for _ in range(2)]
        shifted[0][atom, axis] += step
        shifted[1][atom, axis] -= step
        numeric = -(energy(positions=shifted[0]) - energy(positions=shifted[1])) / (2 * step)
        assert forces[atom, axis] == pytest.approx(numeric, abs=2e-5)
    volume = atoms.get_volume()
    for i, j in ((0, 0), (1, 2)):
        strain = np.zeros((3, 3))
        strain[i, j] = strain[j, i] = step / 2 if i != j else step
        plus = energy(cell=atoms.cell.array @ (np.eye(3) + strain))
        minus = energy(cell=atoms.cell.array @ (np.eye(3) - strain))
        numeric = (plus - minus) / (2 * step * volume)  # dE = V σ_ij (ε_ij + ε_ji)
        assert stress[i, j] == pytest.approx(numeric, abs=2e-6)  # eV/Å^3


def test_model_plus_d3_gives_the_models_magnetic_moments(model, reference_structures):
    from fastchgnet.md.calculator import Calculator, as_atoms

    atoms = as_atoms(reference_structures[0])
    atoms.calc = with_dispersion(model, cutoff=8.0)
    energy, magmoms = atoms.get_potential_energy(), atoms.get_magnetic_moments()
    alone = as_atoms(reference_structures[0])
    alone.calc = Calculator(model)
    np.testing.assert_allclose(magmoms, alone.get_magnetic_moments(), atol=1e-6)  # μB
    assert energy != pytest.approx(alone.get_potential_energy(), abs=1e-3)  # D3 is added
