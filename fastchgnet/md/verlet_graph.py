"""Verlet-skin crystal graphs: reuse one neighbour search across many MD or relaxation steps.

A neighbour search at ``atom_cutoff + skin`` gives *candidate* pairs ``(i, j, image)``. While
no atom has moved far from where it was at that search, every pair within ``atom_cutoff`` is
still a candidate, so each step only recomputes the candidates' lengths, keeps those within the
cutoff and rebuilds the (cheap) angle list. The graph equals a fresh ``build_graph`` (same
bonds, images, short bonds and angles; bonds may come in another order within the short and
long groups).

When is the candidate list still complete? Write the current lattice ``L`` as the reference
lattice deformed by ``D = L_ref^-1 L`` and every position as ``x = x_ref D + u`` (``u`` the
non-affine displacement). A pair vector becomes ``v = v_ref D + u_j - u_i``, so a pair with
``|v_ref| >= cutoff + skin`` has ``|v| >= s_min(D) (cutoff + skin) - 2 max|u|``, ``s_min`` the
smallest singular value of ``D``. The list is rebuilt when that bound drops below the cutoff:
with a fixed cell this is the textbook "some atom moved more than skin / 2".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastchgnet.data.graph import (
    CrystalGraph,
    NeighbourBackend,
    angles_from_bonds,
    build_graph,
    check_isolated,
    structure_name,
)
from fastchgnet.data.periodic import check_open_axes, open_axes
from fastchgnet.errors import StructureError


class VerletGraph:
    """Builds the crystal graph of one evolving structure, reusing candidate pairs.

    Args:
        atom_cutoff: atom-graph cutoff, Å.
        bond_cutoff: bond-graph cutoff, Å.
        skin: extra radius of the candidate search, Å (0 rebuilds every call).
        backend: the neighbour rule to reproduce, as ``build_graph``: ``"pymatgen"`` keeps
            pairs with length <= cutoff, ``"vesin"`` length < cutoff. The candidate search
            itself always uses vesin (fast), with both rules giving a superset.
        allow_isolated: keep atoms without neighbours (no bonds) instead of raising.
    """

    def __init__(
        self,
        atom_cutoff: float = 6.0,
        bond_cutoff: float = 3.0,
        skin: float = 1.0,
        backend: NeighbourBackend = "pymatgen",
        allow_isolated: bool = False,
    ) -> None:
        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.atom_cutoff = float(atom_cutoff)
        self.bond_cutoff = float(bond_cutoff)
        self.skin = float(skin)
        self.backend = backend
        self.allow_isolated = allow_isolated
        self.n_builds = 0  # neighbour searches done so far
        self._name = ""  # the structure's name at the last search
        self._numbers: np.ndarray | None = None
        self._ref_positions = np.empty((0, 3))  # (n_atoms, 3) Å at the last search
        self._ref_inverse_cell = np.eye(3)  # (3, 3) inverse of the lattice at the last search
        self._pairs = np.empty((0, 2), dtype=np.int64)  # (n_candidates, 2) (i, j)
        self._images = np.empty((0, 3), dtype=np.int64)  # (n_candidates, 3) cell offsets
        self._open = np.zeros(3, dtype=bool)  # (3,) axes along which the atoms are not periodic

    def graph(self, atoms: Any, name: str | None = None) -> CrystalGraph:
        """The crystal graph of ``atoms`` (ASE Atoms, periodic or with no bond across its open
        axes: ``data.periodic.open_axes``) at its current positions.

        Raises:
            StructureError: as ``build_graph`` (isolated atom, non-finite coordinates, ...).
        """
        numbers = np.asarray(atoms.numbers, dtype=np.int64)
        positions = np.asarray(atoms.positions, dtype=np.float64)
        lattice = np.array(atoms.cell.array, dtype=np.float64)
        if not (np.isfinite(positions).all() and np.isfinite(lattice).all()):
            raise StructureError(name or structure_name(atoms), "non-finite coordinates or lattice")
        pbc_changed = not np.array_equal(np.resize(atoms.pbc, 3), ~self._open)
        if self._needs_search(numbers, positions, lattice) or pbc_changed:  # named here: the
            self._name = name or structure_name(atoms)
            self._search(atoms, self._name)
        return self._filter(numbers, positions, lattice, name or self._name)

    def _needs_search(
        self, numbers: np.ndarray, positions: np.ndarray, lattice: np.ndarray
    ) -> bool:
        """True when some pair outside the candidates may have come within the cutoff."""
        if self._numbers is None or not np.array_equal(numbers, self._numbers):
            return True
        deformation = self._ref_inverse_cell @ lattice
        non_affine = positions - self._ref_positions @ deformation
        largest_move = float(np.sqrt((non_affine**2).sum(axis=1).max()))
        shrink = float(np.linalg.svd(deformation, compute_uv=False).min())
        return shrink * (self.atom_cutoff + self.skin) - 2.0 * largest_move <= self.atom_cutoff

    def _search(self, atoms: Any, name: str) -> None:
        """Candidate pairs within atom_cutoff + skin (validates the structure as build_graph;
        isolated atoms are judged at the model's cutoff, by ``_filter``)."""
        candidates = build_graph(
            atoms,
            self.atom_cutoff + self.skin,
            self.bond_cutoff,
            name=name,
            backend="vesin",
            allow_isolated=True,
            check_open=False,  # the bonds kept are checked (``_filter``), not the candidates
        )
        pairs, images = _canonical_half_list(candidates.bond_atoms, candidates.bond_images)
        self._pairs, self._images = pairs, images
        self._numbers = np.array(candidates.atomic_numbers)
        self._open = open_axes(atoms, name)
        self._ref_positions = np.array(atoms.positions, dtype=np.float64)
        self._ref_inverse_cell = np.linalg.inv(candidates.lattice)
        self.n_builds += 1

    def _filter(
        self, numbers: np.ndarray, positions: np.ndarray, lattice: np.ndarray, name: str
    ) -> CrystalGraph:
        """Keep the candidates within the cutoff at the current geometry; short bonds first."""
        i, j = self._pairs[:, 0], self._pairs[:, 1]
        vectors = positions[j] + self._images @ lattice - positions[i]
        lengths = np.sqrt((vectors**2).sum(axis=1))
        if self.backend == "pymatgen":
            within = lengths <= self.atom_cutoff
        else:
            within = lengths < self.atom_cutoff
        keep = np.flatnonzero(within)
        keep = keep[np.argsort(lengths[keep] >= self.bond_cutoff, kind="stable")]
        bond_atoms, bond_images, lengths = self._pairs[keep], self._images[keep], lengths[keep]
        check_open_axes(bond_atoms, bond_images, self._open, name)
        if not self.allow_isolated:
            check_isolated(bond_atoms, numbers.shape[0], name, self.atom_cutoff)
        return CrystalGraph(
            atomic_numbers=numbers,
            frac_coords=np.linalg.solve(lattice.T, positions.T).T,
            lattice=lattice,
            bond_atoms=bond_atoms,
            bond_images=bond_images,
            n_short_bonds=int((lengths < self.bond_cutoff).sum()),
            angle_edges=angles_from_bonds(bond_atoms, lengths, self.bond_cutoff),
            atom_cutoff=self.atom_cutoff,
            bond_cutoff=self.bond_cutoff,
            name=name,
        )


def _canonical_half_list(pairs: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pair as build_graph's pymatgen path stores it: i < j, or i == j with the image
    lexicographically positive (the same pair seen from j is (j, i, -image))."""
    first_nonzero = np.where(
        images[:, 0] != 0, images[:, 0], np.where(images[:, 1] != 0, images[:, 1], images[:, 2])
    )
    flip = (pairs[:, 0] > pairs[:, 1]) | ((pairs[:, 0] == pairs[:, 1]) & (first_nonzero < 0))
    pairs = np.where(flip[:, None], pairs[:, ::-1], pairs)
    images = np.where(flip[:, None], -images, images)
    return np.ascontiguousarray(pairs), np.ascontiguousarray(images)
