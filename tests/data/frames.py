"""Small structures and MPtrj-format files for the data tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "reference"


def rock_salt(seed: int = 0, a: float = 5.64, species: tuple[str, str] = ("Na", "Cl")):
    """An 8-atom rock-salt cell with atoms displaced by up to 0.1 Å."""
    cation = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    anion = [[0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]
    rng = np.random.default_rng(seed)
    cart = np.array(cation + anion) * a + rng.uniform(-0.1, 0.1, (8, 3))
    structure = Structure(
        Lattice.cubic(a), [species[0]] * 4 + [species[1]] * 4, cart, coords_are_cartesian=True
    )
    return structure


def isolated_atom() -> Structure:
    """One atom in a 20 Å box: no neighbour within 6 Å."""
    return Structure(Lattice.cubic(20.0), ["Li"], [[0, 0, 0]])


def symmetric(matrix: np.ndarray) -> np.ndarray:
    """``(matrix + matrix.T) / 2``: a random stress label made symmetric, as a stress is
    (ingest skips a frame whose stress is not: ``frame.stress_asymmetry``)."""
    return (matrix + matrix.T) / 2


def mptrj_record(structure: Structure, seed: int, magmom: bool = True) -> dict:
    """One MPtrj frame record with random labels (stress in kBar, VASP sign)."""
    rng = np.random.default_rng(seed)
    n = len(structure)
    total = float(rng.uniform(-8, -3) * n)
    return {
        "structure": structure.as_dict(),
        "uncorrected_total_energy": total,
        "corrected_total_energy": total - 1.5,
        "energy_per_atom": total / n,
        "ef_per_atom": 0.1,
        "e_per_atom_relaxed": -5.0,
        "force": rng.normal(size=(n, 3)).tolist(),
        "stress": symmetric(rng.normal(scale=10, size=(3, 3))).tolist(),
        "magmom": rng.normal(size=n).tolist() if magmom else None,
        "mp_id": "x",
    }


def write_mptrj(path: Path, materials: dict[str, dict[str, dict]]) -> Path:
    path.write_text(json.dumps(materials))
    return path
