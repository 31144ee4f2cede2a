"""Phonons through phonopy: all displaced supercells of a finite-displacement run evaluated in
batched model calls. Units: displacement Å, forces eV/Å, force constants eV/Å^2, THz."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

from fastchgnet.md.calculator import as_atoms
from fastchgnet.workflows.batch import Evaluator


def phonopy_run(
    structure: Any,
    evaluate: Evaluator,
    supercell_matrix: Any = (2, 2, 2),
    displacement: float = 0.01,
    symmetrize: bool = False,
) -> Any:
    """A ``Phonopy`` object with force constants of ``structure`` (pymatgen or ASE).

    Args:
        evaluate: e.g. ``batched_evaluator(model)``: every displaced supercell in one pass.
        supercell_matrix: phonopy's supercell (3 numbers or a 3x3 matrix).
        displacement: finite displacement, Å.
        symmetrize: impose translational and permutational symmetry on the force constants
            (phonopy's ``symmetrize_force_constants``); off to see the model's own.
    """
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    atoms = as_atoms(structure)
    unit = PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=atoms.cell.array,
        scaled_positions=atoms.get_scaled_positions(),
    )
    matrix = np.diag(supercell_matrix) if np.ndim(supercell_matrix) == 1 else supercell_matrix
    phonon = Phonopy(unit, supercell_matrix=matrix)
    phonon.generate_displacements(distance=displacement)
    cells = [
        Atoms(s.symbols, cell=s.cell, scaled_positions=s.scaled_positions, pbc=True)
        for s in phonon.supercells_with_displacements
    ]
    phonon.forces = np.array([r["forces"] for r in evaluate(cells)])
    phonon.produce_force_constants()
    if symmetrize:
        phonon.symmetrize_force_constants()
    return phonon


def gamma_frequencies(phonon: Any) -> np.ndarray:
    """Frequencies at Γ, THz (3 x atoms), ascending."""
    phonon.run_qpoints([[0.0, 0.0, 0.0]])
    return np.sort(phonon.get_qpoints_dict()["frequencies"][0])


def acoustic_sum(force_constants: np.ndarray) -> float:
    """Largest |Σ_j Φ_ij| over atoms i and Cartesian pairs, eV/Å^2 (0 by translational
    invariance)."""
    return float(np.abs(force_constants.sum(axis=1)).max())
