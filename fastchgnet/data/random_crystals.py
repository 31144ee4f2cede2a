"""Varied synthetic crystals: common prototypes, random elements, strained, rattled, tiled.

Used by tests and benchmarks (and as the seed of the bundled quick-start data). Reproducible
from a seed. Every structure has its nearest-neighbour distances scaled to about the sum of covalent
radii, so forces stay moderate and no atom is isolated within the 6 Å atom-graph cutoff.
"""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure

# name -> (lattice shape: "cubic" | "hexagonal" | "tetragonal", c/a, fractional sites)
PROTOTYPES: dict[str, tuple[str, float, list[list[float]]]] = {
    "simple_cubic": ("cubic", 1.0, [[0, 0, 0]]),
    "bcc": ("cubic", 1.0, [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "fcc": ("cubic", 1.0, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
    "rocksalt": (
        "cubic",
        1.0,
        [
            [0, 0, 0],
            [0.5, 0.5, 0],
            [0.5, 0, 0.5],
            [0, 0.5, 0.5],
            [0.5, 0, 0],
            [0, 0.5, 0],
            [0, 0, 0.5],
            [0.5, 0.5, 0.5],
        ],
    ),
    "cscl": ("cubic", 1.0, [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "perovskite": (
        "cubic",
        1.0,
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    ),
    "fluorite": (
        "cubic",
        1.0,
        [
            [0, 0, 0],
            [0.5, 0.5, 0],
            [0.5, 0, 0.5],
            [0, 0.5, 0.5],
            [0.25, 0.25, 0.25],
            [0.75, 0.75, 0.25],
            [0.75, 0.25, 0.75],
            [0.25, 0.75, 0.75],
            [0.75, 0.75, 0.75],
            [0.25, 0.25, 0.75],
            [0.25, 0.75, 0.25],
            [0.75, 0.25, 0.25],
        ],
    ),
    "hcp": ("hexagonal", 1.633, [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]),
    "wurtzite": (
        "hexagonal",
        1.6,
        [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, 0.375], [2 / 3, 1 / 3, 0.875]],
    ),
    "rutile": (
        "tetragonal",
        0.64,
        [
            [0, 0, 0],
            [0.5, 0.5, 0.5],
            [0.3, 0.3, 0],
            [0.7, 0.7, 0],
            [0.8, 0.2, 0.5],
            [0.2, 0.8, 0.5],
        ],
    ),
}


def _lattice(shape: str, c_over_a: float) -> Lattice:
    if shape == "hexagonal":
        return Lattice.hexagonal(1.0, c_over_a)
    if shape == "tetragonal":
        return Lattice.tetragonal(1.0, c_over_a)
    return Lattice.cubic(1.0)


def _distance_ratio(structure: Structure) -> float:
    """Smallest (pair distance / sum of the pair's covalent radii), periodic images included."""
    from ase.data import covalent_radii

    radii = covalent_radii[np.array(structure.atomic_numbers)]
    distances = structure.distance_matrix
    np.fill_diagonal(distances, np.inf)
    ratio = distances / (radii[:, None] + radii[None, :])
    self_image = min(structure.lattice.abc) / (2 * radii.max())
    return float(min(ratio.min(), self_image))


def _loosest_atom_distance(structure: Structure) -> float:
    """Largest over atoms of the distance to the atom's nearest neighbour (images included), Å."""
    distances = structure.distance_matrix
    np.fill_diagonal(distances, np.inf)
    nearest = np.minimum(distances.min(axis=1), min(structure.lattice.abc))
    return float(nearest.max())


def _max_coordination(structure: Structure, radius: float) -> int:
    """Most neighbours any atom has within ``radius`` Å (bounds the bond graph's angles)."""
    centres = structure.get_neighbor_list(radius)[0]
    return int(np.bincount(centres, minlength=len(structure)).max()) if len(centres) else 0


def random_structure(
    rng: np.random.Generator,
    *,
    max_elements_z: int = 94,
    max_atoms: int = 64,
    strain: float = 0.05,
    rattle: float = 0.05,
) -> Structure:
    """One random crystal, redrawn until every atom has a neighbour within 5.5 Å and none has
    more than 16 within 3 Å (physical densities; bounded bond-graph size).

    Args:
        rng: numpy random generator (the only source of randomness).
        max_elements_z: elements are drawn from Z = 1..max_elements_z.
        max_atoms: at most this many atoms: prototypes with more sites are not drawn, and
            the one drawn is tiled while it stays at or below it.
        strain: largest absolute entry of the random strain applied to the lattice.
        rattle: standard deviation of the random displacement of each atom, Å.
    """
    while True:
        structure = _draw(rng, max_elements_z, max_atoms, strain, rattle)
        if _loosest_atom_distance(structure) < 5.5 and _max_coordination(structure, 3.0) <= 16:
            return structure


def _draw(
    rng: np.random.Generator, max_elements_z: int, max_atoms: int, strain: float, rattle: float
) -> Structure:
    # only prototypes within the cap (all of them from 12 atoms up: the same draws as before)
    fitting = [name for name, (_, _, sites) in PROTOTYPES.items() if len(sites) <= max_atoms]
    if not fitting:
        raise ValueError(f"max_atoms={max_atoms}: need at least 1 (a one-atom prototype)")
    name = fitting[rng.integers(len(fitting))]
    shape, c_over_a, sites = PROTOTYPES[name]
    n_species = min(len(sites), int(rng.integers(1, 4)))
    elements = rng.integers(1, max_elements_z + 1, size=n_species)
    species = [int(elements[k % n_species]) for k in range(len(sites))]
    structure = Structure(_lattice(shape, c_over_a), species, sites)
    # nearest neighbours at 0.95-1.2 times the sum of covalent radii: physical, moderate forces
    target = rng.uniform(0.95, 1.2)
    structure.scale_lattice(structure.volume * (target / _distance_ratio(structure)) ** 3)
    reps = [1, 1, 1]
    for axis in rng.permutation(3):
        if len(structure) * np.prod(reps) * 2 <= max_atoms and rng.random() < 0.6:
            reps[axis] = (
                int(rng.integers(2, 4)) if len(structure) * 3 * np.prod(reps) <= max_atoms else 2
            )
    structure.make_supercell(reps)
    deformation = np.eye(3) + rng.uniform(-strain, strain, size=(3, 3))
    structure = Structure(
        Lattice(structure.lattice.matrix @ deformation), structure.species, structure.frac_coords
    )
    cart = structure.cart_coords + rng.normal(0.0, rattle, size=(len(structure), 3))
    structure = Structure(structure.lattice, structure.species, cart, coords_are_cartesian=True)
    structure.properties["label"] = f"{name}-{len(structure)}"
    return structure


def no_angle_structure() -> Structure:
    """Simple cubic Cs with a = 3.6 Å: every atom has neighbours within 6 Å, none within 3 Å,
    so the bond graph has no angles."""
    structure = Structure(Lattice.cubic(3.6), ["Cs"], [[0, 0, 0]])
    structure.properties["label"] = "no-angles"
    return structure


def varied_structures(n: int, seed: int = 0, max_atoms: int = 64) -> list[Structure]:
    """``n`` varied crystals (the first is always the no-angle one), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    structures = [no_angle_structure()]
    while len(structures) < n:
        structures.append(random_structure(rng, max_atoms=max_atoms))
    return structures[:n]
