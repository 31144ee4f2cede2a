"""Crystal graphs: periodic neighbour lists, undirected bonds and bond-graph angles.

A crystal becomes two graphs (as in CHGNet):

- the *atom graph*: every pair of atoms closer than ``atom_cutoff`` (6 Å), across periodic
  images. Each pair is stored once as an undirected **bond** ``b = (i, j, image)``: atom ``j``
  sits at ``frac_j + image`` seen from atom ``i``. Bonds shorter than ``bond_cutoff`` (the
  bond graph's nodes) come first: bonds ``0 .. n_short_bonds - 1``. Its two **directed edges**
  are implied:
  edge ``b`` points ``i -> j`` (centre ``i``) and edge ``n_bonds + b`` points ``j -> i``
  (centre ``j``, image ``-image``).
- the *bond graph*: directed edges shorter than ``bond_cutoff`` (3 Å) that share a centre atom
  form **angles**; every ordered pair ``(e1, e2)``, ``e1 != e2``, is one angle, whose update is
  sent to the bond of ``e1``.

Everything here is numpy on one structure, vectorised (no loop over atoms or edges).

Over 300 lines on purpose: the graph construction (neighbour search backends, bond and
angle lists, the checks that name a bad structure) is one algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fastchgnet.data.periodic import check_open_axes, open_axes
from fastchgnet.errors import StructureError

NeighbourBackend = Literal["pymatgen", "vesin"]

#: Volumes below this (Å^3) are taken as a degenerate lattice.
MIN_CELL_VOLUME = 1e-3


@dataclass(frozen=True)
class CrystalGraph:
    """The graph of one crystal (numpy, local indices). Units: Å.

    Fields (shape | meaning):
        atomic_numbers  (n_atoms,) int64       | Z of each atom
        frac_coords     (n_atoms, 3) float64   | fractional coordinates (as given, not wrapped)
        lattice         (3, 3) float64         | lattice vectors as rows, Å
        bond_atoms      (n_bonds, 2) int64     | (i, j) of each undirected bond within atom_cutoff
        bond_images     (n_bonds, 3) int64     | integer cell offset of j as seen from i
        n_short_bonds   int                    | bonds shorter than bond_cutoff; they come first
        angle_edges     (n_angles, 2) int64    | directed edges (e1, e2) sharing their centre atom,
                                               | both shorter than bond_cutoff; edge ids in
                                               | [0, 2 * n_bonds), see the module docstring
        atom_cutoff     float                  | Å
        bond_cutoff     float                  | Å
        name            str                    | the structure's name, used in error messages
    """

    atomic_numbers: np.ndarray
    frac_coords: np.ndarray
    lattice: np.ndarray
    bond_atoms: np.ndarray
    bond_images: np.ndarray
    n_short_bonds: int
    angle_edges: np.ndarray
    atom_cutoff: float
    bond_cutoff: float
    name: str = ""

    @property
    def n_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def n_bonds(self) -> int:
        return int(self.bond_atoms.shape[0])

    @property
    def n_edges(self) -> int:
        """Directed edges: two per bond."""
        return 2 * self.n_bonds

    @property
    def n_angles(self) -> int:
        return int(self.angle_edges.shape[0])

    def edge_centres(self) -> np.ndarray:
        """(n_edges,) int64 | centre atom of every directed edge."""
        return np.concatenate([self.bond_atoms[:, 0], self.bond_atoms[:, 1]])

    def edge_neighbours(self) -> np.ndarray:
        """(n_edges,) int64 | neighbour atom of every directed edge."""
        return np.concatenate([self.bond_atoms[:, 1], self.bond_atoms[:, 0]])

    def edge_images(self) -> np.ndarray:
        """(n_edges, 3) int64 | image of the neighbour of every directed edge."""
        return np.concatenate([self.bond_images, -self.bond_images])

    def bond_lengths(self) -> np.ndarray:
        """(n_bonds,) float64 | bond lengths, Å."""
        cart = self.frac_coords @ self.lattice
        i, j = self.bond_atoms[:, 0], self.bond_atoms[:, 1]
        vec = cart[j] + self.bond_images @ self.lattice - cart[i]
        return np.linalg.norm(vec, axis=1)


def structure_name(structure: object, index: int | None = None) -> str:
    """A readable name for a pymatgen Structure or ASE Atoms: id or label, formula, position."""
    label = None
    for source in (getattr(structure, "properties", None), getattr(structure, "info", None)):
        if isinstance(source, dict):
            for key in ("material_id", "mp_id", "name", "label", "id"):
                if source.get(key) is not None:
                    label = str(source[key])
                    break
    try:
        name = formula(atomic_numbers(structure))
    except (AttributeError, TypeError, ValueError):  # a disordered site has no one element
        composition = getattr(structure, "composition", None)
        formula_of = getattr(composition, "formula", None)
        name = formula_of.replace(" ", "") if formula_of else type(structure).__name__
    where = f"structure {index}" if index is not None else "structure"
    return f"{where} {label} ({name})" if label else f"{where} ({name})"


def atomic_numbers(structure: object) -> np.ndarray:
    """(n,) int64 atomic numbers of a pymatgen Structure or ASE Atoms; 0 for a dummy species
    ("X": no element, as ASE numbers it; pymatgen's Z of one is a hash)."""
    numbers = getattr(structure, "numbers", None)  # ASE Atoms
    if numbers is not None:
        return np.asarray(numbers, dtype=np.int64)
    from pymatgen.core.periodic_table import DummySpecies

    species = structure.species  # type: ignore[attr-defined]
    return np.array([0 if isinstance(sp, DummySpecies) else sp.Z for sp in species], np.int64)


def formula(numbers: np.ndarray) -> str:
    """Formula for messages from atomic numbers (n,), elements by Z, e.g. ``Li2O4Mn2``: cheap,
    and without pymatgen's electronegativity sort, which warns for every noble gas."""
    z, counts = np.unique(numbers, return_counts=True)
    symbols = [element_symbol(int(k)) for k in z]
    return "".join(f"{s}{c if c > 1 else ''}" for s, c in zip(symbols, counts, strict=False))


def element_symbol(z: int) -> str:
    """The symbol of atomic number ``z`` (``X`` for 0, ASE's dummy), ``Z{z}`` past Og."""
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z{z}"


def _as_arrays(structure: object, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(atomic_numbers (n,), frac_coords (n, 3), lattice (3, 3)) from Structure or Atoms."""
    if hasattr(structure, "get_scaled_positions"):  # ASE Atoms (open axes: ``open_axes``)
        lattice = np.array(structure.cell.array, dtype=np.float64)  # type: ignore[attr-defined]
        numbers = np.asarray(structure.numbers, dtype=np.int64)  # type: ignore[attr-defined]
        cart = np.asarray(structure.positions, dtype=np.float64)  # type: ignore[attr-defined]
        frac = _cart_to_frac(cart, lattice, name)
    elif hasattr(structure, "lattice") and hasattr(structure, "frac_coords"):  # pymatgen
        check_ordered(structure, name)
        # C order: a strained Structure's lattice can be Fortran-ordered, which pymatgen's
        # compiled neighbour search refuses ("ndarray is not C-contiguous")
        lattice = np.array(structure.lattice.matrix, dtype=np.float64, order="C")  # type: ignore[attr-defined]
        frac = np.array(structure.frac_coords, dtype=np.float64, order="C")  # type: ignore[attr-defined]
        numbers = atomic_numbers(structure)
    else:
        raise TypeError(
            f"{name}: expected a pymatgen Structure or ASE Atoms, got {type(structure)}"
        )
    return numbers, frac, lattice


def check_ordered(structure: object, name: str) -> None:
    """Raise StructureError, naming ``name``, when ``structure`` (a pymatgen Structure) has
    partial occupancies; an ASE Atoms always passes."""
    if not getattr(structure, "is_ordered", True):
        raise StructureError(name, "is disordered (partial occupancies); order it first")


def _cart_to_frac(cart: np.ndarray, lattice: np.ndarray, name: str) -> np.ndarray:
    check_lattice(lattice, name)
    return np.linalg.solve(lattice.T, cart.T).T


def check_lattice(lattice: np.ndarray, name: str) -> None:
    """Raise ``StructureError`` naming ``name`` unless the (3, 3) lattice (Å) is finite and
    spans at least ``MIN_CELL_VOLUME`` Å^3."""
    if not np.isfinite(lattice).all():
        raise StructureError(name, "lattice has non-finite entries")
    volume = abs(float(np.linalg.det(lattice)))
    if volume < MIN_CELL_VOLUME:
        raise StructureError(name, f"lattice has zero volume ({volume:.3g} Å^3)")


def _check_inputs(
    numbers: np.ndarray, frac: np.ndarray, lattice: np.ndarray, name: str, structure: object
) -> None:
    if numbers.shape[0] == 0:
        raise StructureError(name, "has no atoms")
    check_lattice(lattice, name)
    if not np.isfinite(frac).all():
        bad = np.flatnonzero(~np.isfinite(frac).all(axis=1))
        raise StructureError(name, f"non-finite coordinates for atom(s) {bad[:10].tolist()}")
    if (numbers < 1).any():
        bad = np.flatnonzero(numbers < 1).tolist()
        sites = ", ".join(_unknown_site(structure, i, int(numbers[i])) for i in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise StructureError(name, f"unknown element{'s' if len(bad) > 1 else ''} {sites}{more}")


def _unknown_site(structure: object, index: int, z: int) -> str:
    """``'Xx' at site 3 (label Mn2)``: an atom without element as the input spells it (a
    pymatgen site's species and label; ASE Atoms hold only the number, 'X' for 0)."""
    sites = getattr(structure, "sites", None)
    if sites is None:  # ASE Atoms
        return f"{element_symbol(z)!r} at site {index}"
    site = sites[index]
    symbol = str(getattr(site.specie, "symbol", site.species_string))
    label = getattr(site, "label", None)
    where = f"{symbol!r} at site {index}"
    named = label and label not in (symbol, site.species_string)  # not pymatgen's default
    return f"{where} (label {label})" if named else where


def _neighbour_pairs(
    cart: np.ndarray, lattice: np.ndarray, cutoff: float, backend: NeighbourBackend
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Half neighbour list: each pair within ``cutoff`` once, as (i, j, image, distance)."""
    if backend == "vesin":
        from vesin import NeighborList

        i, j, image, dist = NeighborList(cutoff=cutoff, full_list=False).compute(
            cart, lattice, True, "ijSd"
        )
        return i.astype(np.int64), j.astype(np.int64), image.astype(np.int64), dist
    if backend == "pymatgen":
        from pymatgen.optimization.neighbors import find_points_in_spheres

        i, j, image, dist = find_points_in_spheres(
            cart,
            cart,
            r=cutoff,
            pbc=np.array([1, 1, 1], dtype=np.int64),
            lattice=lattice,
            tol=1e-8,
        )
        image = np.round(image).astype(np.int64)
        keep = (i < j) | ((i == j) & _positive_image(image))
        return i[keep].astype(np.int64), j[keep].astype(np.int64), image[keep], dist[keep]
    raise ValueError(f"unknown neighbour backend {backend!r}; use 'vesin' or 'pymatgen'")


def _positive_image(image: np.ndarray) -> np.ndarray:
    """(n,) bool | image is lexicographically positive (picks one of +n / -n)."""
    first = np.where(
        image[:, 0] != 0, image[:, 0], np.where(image[:, 1] != 0, image[:, 1], image[:, 2])
    )
    return first > 0


def angles_from_bonds(
    bond_atoms: np.ndarray, bond_lengths: np.ndarray, bond_cutoff: float
) -> np.ndarray:
    """All ordered pairs of distinct short directed edges that share a centre atom.

    Args:
        bond_atoms: (n_bonds, 2) int64, (i, j) of each bond.
        bond_lengths: (n_bonds,) float64, Å.
        bond_cutoff: edges shorter than this (Å) enter the bond graph.

    Returns:
        (n_angles, 2) int64 directed edge ids (e1, e2); edge ``b`` has centre ``i`` and edge
        ``n_bonds + b`` has centre ``j``.
    """
    n_bonds = bond_atoms.shape[0]
    short = np.flatnonzero(bond_lengths < bond_cutoff)
    edges = np.concatenate([short, short + n_bonds])
    centres = np.concatenate([bond_atoms[short, 0], bond_atoms[short, 1]])
    order = np.argsort(centres, kind="stable")
    edges, centres = edges[order], centres[order]
    # group sizes: each edge pairs with every edge of its centre's group
    starts = np.flatnonzero(np.r_[True, centres[1:] != centres[:-1]])
    sizes = np.diff(np.r_[starts, centres.shape[0]])
    group_start = np.repeat(starts, sizes)  # (n_short_edges,)
    group_size = np.repeat(sizes, sizes)
    first = np.repeat(np.arange(edges.shape[0]), group_size)
    block_start = np.repeat(np.cumsum(group_size) - group_size, group_size)
    second = np.repeat(group_start, group_size) + np.arange(first.shape[0]) - block_start
    keep = first != second
    return np.stack([edges[first[keep]], edges[second[keep]]], axis=1).astype(np.int64)


def check_isolated(bond_atoms: np.ndarray, n_atoms: int, name: str, atom_cutoff: float) -> None:
    """Raise ``StructureError`` naming the structure if an atom has no bond: ``bond_atoms``
    (n_bonds, 2) within ``atom_cutoff`` Å of ``n_atoms`` atoms."""
    degree = np.bincount(bond_atoms.ravel(), minlength=n_atoms)
    if (degree == 0).any():
        isolated = np.flatnonzero(degree == 0)
        raise StructureError(
            name,
            f"{isolated.shape[0]} isolated atom(s) {isolated[:10].tolist()} with no neighbour "
            f"within atom_cutoff={atom_cutoff} Å",
        )


#: Two atoms closer than this (Å) are an input error (atoms placed twice, or an atom on its
#: own periodic image): no solid has them, and at 0 Å the bond basis divides by zero.
MIN_PAIR_DISTANCE = 0.1


def check_overlap(bond_atoms: np.ndarray, bond_lengths: np.ndarray, name: str) -> None:
    """Raise ``StructureError`` naming the structure and the closest pair if two atoms (or an
    atom and its periodic image) are closer than ``MIN_PAIR_DISTANCE``: ``bond_atoms``
    (n_bonds, 2) and their ``bond_lengths`` (n_bonds,), Å."""
    if bond_lengths.shape[0] == 0 or bond_lengths.min() >= MIN_PAIR_DISTANCE:
        return
    closest = int(np.argmin(bond_lengths))
    i, j = bond_atoms[closest].tolist()
    pair = f"atom {i} and its periodic image" if i == j else f"atoms {i} and {j}"
    close = int((bond_lengths < MIN_PAIR_DISTANCE).sum())
    raise StructureError(
        name,
        f"{pair} are {bond_lengths[closest]:.3f} Å apart ({close} pair(s) closer than "
        f"{MIN_PAIR_DISTANCE} Å: overlapping atoms)",
    )


def build_graph(
    structure: object,
    atom_cutoff: float = 6.0,
    bond_cutoff: float = 3.0,
    *,
    name: str | None = None,
    backend: NeighbourBackend = "pymatgen",
    allow_isolated: bool = False,
    check_open: bool = True,
) -> CrystalGraph:
    """Build the CHGNet atom graph and bond graph of one crystal.

    Args:
        structure: a pymatgen ``Structure`` or an ASE ``Atoms`` (positions in Å); periodic,
            or with a cell and no bond across its open axes (a slab, a boxed molecule).
        atom_cutoff: atom-graph cutoff radius, Å (pairs with distance < cutoff are bonds).
        bond_cutoff: bond-graph cutoff, Å (directed edges shorter than it form angles).
        name: name used in error messages (default: id or label, and formula).
        backend: neighbour-list library: ``"pymatgen"`` (default; the reference's own, so the
            edge set matches it exactly, pairs with distance <= cutoff) or ``"vesin"``
            (distance < cutoff). bench/bench_graph.py measures both.
        allow_isolated: keep atoms without any neighbour within atom_cutoff (they get no
            bond; the reference chgnet's ``on_isolated_atoms="warn"|"ignore"``) instead of
            raising.
        check_open: refuse a bond across an axis along which ``structure`` is not periodic
            (``check_open_axes``); off for a neighbour search beyond the cutoff, whose caller
            checks the bonds it keeps.

    Returns:
        The ``CrystalGraph``.

    Raises:
        StructureError: no atoms, non-finite coordinates or lattice, zero-volume lattice, an
            axis that is not periodic without a cell or with a bond across it,
            an atom without element, two atoms closer than ``MIN_PAIR_DISTANCE`` (0.1 Å), or
            (unless ``allow_isolated``) an isolated atom (no neighbour within atom_cutoff).
    """
    if not 0.0 < bond_cutoff <= atom_cutoff:
        raise ValueError(f"need 0 < bond_cutoff <= atom_cutoff, got {bond_cutoff}, {atom_cutoff}")
    name = name or structure_name(structure)
    open_along = open_axes(structure, name)
    numbers, frac, lattice = _as_arrays(structure, name)
    _check_inputs(numbers, frac, lattice, name, structure)
    cart = frac @ lattice
    i, j, image, dist = _neighbour_pairs(cart, lattice, atom_cutoff, backend)
    if check_open:
        check_open_axes(np.stack([i, j], axis=1), image, open_along, name)
    short_first = np.argsort(dist >= bond_cutoff, kind="stable")
    i, j, image, dist = i[short_first], j[short_first], image[short_first], dist[short_first]
    bond_atoms = np.stack([i, j], axis=1)
    check_overlap(bond_atoms, dist, name)
    if not allow_isolated:
        check_isolated(bond_atoms, numbers.shape[0], name, atom_cutoff)
    return CrystalGraph(
        atomic_numbers=numbers,
        frac_coords=frac,
        lattice=lattice,
        bond_atoms=bond_atoms,
        bond_images=image,
        n_short_bonds=int((dist < bond_cutoff).sum()),
        angle_edges=angles_from_bonds(bond_atoms, dist, bond_cutoff),
        atom_cutoff=float(atom_cutoff),
        bond_cutoff=float(bond_cutoff),
        name=name,
    )
