"""Equation of state and elastic tensor from strained cells, every cell evaluated in batches.

Clamped ions: atoms keep their fractional coordinates in each strained cell (relax first with
``fastchgnet.md.relax`` for a relaxed reference state). Units: volume Å^3, energy eV, bulk
modulus and elastic constants GPa; strains are Voigt (engineering shear), ASE's stress sign.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ase.stress import voigt_6_to_full_3x3_strain

from fastchgnet.md.calculator import as_atoms
from fastchgnet.units import EV_PER_A3_TO_GPA
from fastchgnet.workflows.batch import Evaluator


@dataclass
class EquationOfState:
    """Birch-Murnaghan fit: volumes (k,) Å^3, energies (k,) eV, ``v0`` Å^3, ``e0`` eV,
    ``bulk_modulus`` GPa."""

    volumes: np.ndarray
    energies: np.ndarray
    v0: float
    e0: float
    bulk_modulus: float


def strained(structure: Any, deformation: np.ndarray) -> Any:
    """ASE Atoms of ``structure`` with its cell times ``deformation`` (3, 3), ions scaled."""
    atoms = as_atoms(structure)
    atoms.set_cell(atoms.cell.array @ deformation.T, scale_atoms=True)
    return atoms


def equation_of_state(
    structure: Any, evaluate: Evaluator, max_strain: float = 0.02, points: int = 7
) -> EquationOfState:
    """Energies of isotropically strained cells (linear strain up to ``max_strain``) fitted
    with pymatgen's Birch-Murnaghan EOS."""
    from pymatgen.analysis.eos import BirchMurnaghan

    cells = [
        strained(structure, (1 + s) * np.eye(3)) for s in np.linspace(-1, 1, points) * max_strain
    ]
    energies = np.array([r["energy"] for r in evaluate(cells)])
    volumes = np.array([atoms.get_volume() for atoms in cells])
    fit = BirchMurnaghan(volumes, energies)
    fit.fit()
    return EquationOfState(volumes, energies, float(fit.v0), float(fit.e0), float(fit.b0_GPa))


def elastic_tensor(
    structure: Any, evaluate: Evaluator, strains: tuple[float, ...] = (-0.01, -0.005, 0.005, 0.01)
) -> np.ndarray:
    """(6, 6) clamped-ion elastic constants C_ij = dσ_i/dε_j, GPa (Voigt), symmetrised; from
    the stress of 6 x len(strains) strained cells, evaluated together, fitted by least
    squares together with the unstrained cell's stress."""
    cells, index = [as_atoms(structure)], [(None, 0.0)]
    for component in range(6):
        for amount in strains:
            voigt = np.zeros(6)
            voigt[component] = amount
            cells.append(strained(structure, voigt_6_to_full_3x3_strain(voigt)))  # I + ε
            index.append((component, amount))
    stresses = np.array([r["stress"] for r in evaluate(cells)]) * EV_PER_A3_TO_GPA
    tensor = np.zeros((6, 6))
    for component in range(6):
        rows = [0] + [k for k, (c, _) in enumerate(index) if c == component]
        amounts = np.array([index[k][1] for k in rows])
        slope = np.polyfit(amounts, stresses[rows], 1)[0]  # (6,) dσ/dε_component
        tensor[:, component] = slope
    return (tensor + tensor.T) / 2


def voigt_bulk_modulus(tensor: np.ndarray) -> float:
    """Voigt average bulk modulus of a (6, 6) elastic tensor, same unit."""
    return float((np.trace(tensor[:3, :3]) + 2 * (tensor[0, 1] + tensor[0, 2] + tensor[1, 2])) / 9)
