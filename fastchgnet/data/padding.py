"""Pad a batch to a fixed capacity so compiled code sees one shape per capacity bucket.

A padded batch has ``capacity.structures + 1`` structures: the real ones first, then empty
slots (no atoms), then one *dummy* structure that owns every padding atom, bond and angle.
The dummy is a small cubic cell (``DUMMY_CELL`` Å) of hydrogen atoms; each padding bond joins
one of them to its own periodic image, so all geometry is finite and no length is zero; its
padding angles pair a padding bond with its own reverse. Bonds go round the padding atoms and
angles round the bond-graph bonds, so no atom or bond gathers all the padding: a parallel
scatter sum (``model.layers.parallel_cpu``) splits its work by destination row. Real outputs
never see the padding (message passing stays inside a structure), and every label of padding
is masked.
Real structures and atoms come first, so unpadding is slicing (``unpad``).

Padding is built as extra CrystalGraphs and collated with ``collate``, whose layout (short
bonds of all structures first) then holds for the padded batch too: the bond-graph slice is
``capacity.short_bonds`` long.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import torch

from fastchgnet.data.batch import GraphBatch, collate
from fastchgnet.data.capacity import Capacity, Counts, fits, room
from fastchgnet.data.graph import CrystalGraph
from fastchgnet.data.labels import FrameLabels, LabelBatch, collate_labels

#: Edge of the dummy structure's cubic cell, Å (shorter than the 3 Å bond cutoff).
DUMMY_CELL = 2.0


def _empty(cutoffs: tuple[float, float], n_atoms: int, name: str) -> CrystalGraph:
    lattice = np.eye(3) * DUMMY_CELL
    return CrystalGraph(
        atomic_numbers=np.ones(n_atoms, dtype=np.int64),
        frac_coords=np.zeros((n_atoms, 3)),
        lattice=lattice,
        bond_atoms=np.zeros((0, 2), dtype=np.int64),
        bond_images=np.zeros((0, 3), dtype=np.int64),
        n_short_bonds=0,
        angle_edges=np.zeros((0, 2), dtype=np.int64),
        atom_cutoff=cutoffs[0],
        bond_cutoff=cutoffs[1],
        name=name,
    )


def _dummy(
    cutoffs: tuple[float, float], atoms: int, short: int, long: int, angles: int
) -> CrystalGraph:
    """The padding structure: ``atoms`` H atoms, ``short + long`` self-image bonds (bond k of
    atom k mod ``atoms``), ``angles`` angles each pairing a short padding bond with its
    reverse."""
    bonds = short + long
    if angles and not short:
        raise ValueError("padding angles need at least one padding bond-graph bond")
    images = np.zeros((bonds, 3), dtype=np.int64)
    images[:, 0] = 1
    first = np.arange(angles) % max(short, 1)
    dummy = _empty(cutoffs, atoms, "padding")
    return replace(
        dummy,
        bond_atoms=np.repeat(np.arange(bonds, dtype=np.int64)[:, None] % atoms, 2, axis=1),
        bond_images=images,
        n_short_bonds=short,
        angle_edges=np.stack([first, first + bonds], axis=1).astype(np.int64),
    )


#: The smallest padded batch: no real structure, a dummy of one atom, one bond-graph bond and
#: one angle. A rank that has no structure left for a step trains on it (zero loss, zero
#: gradient for every parameter), so it still joins the step's collectives.
PADDING_ONLY = Capacity(structures=0, atoms=1, bonds=1, angles=1, short_bonds=1)


def pad_graphs(
    graphs: Sequence[CrystalGraph],
    capacity: Capacity,
    cutoffs: tuple[float, float] | None = None,
) -> list[CrystalGraph]:
    """The graphs of a padded batch: the real ones (possibly none), empty slots, then the dummy.

    With ``capacity.short_bonds`` None every real bond is counted as a bond-graph bond (exact:
    bonds longer than the bond cutoff have zero bond-graph weight and no angles), and the
    bond-graph slice is ``capacity.bonds`` long.

    ``cutoffs`` (atom, bond) Å are recorded on the padding graphs; default: the first
    graph's, or CHGNet's 6 and 3 Å when there is none.

    Raises:
        ValueError: the graphs do not fit (a capacity must leave at least one padding atom).
    """
    if cutoffs is None:
        cutoffs = (graphs[0].atom_cutoff, graphs[0].bond_cutoff) if graphs else (6.0, 3.0)
    if capacity.short_bonds is None:
        graphs = [replace(g, n_short_bonds=g.n_bonds) for g in graphs]
        short_capacity = capacity.bonds
    else:
        short_capacity = capacity.short_bonds
    counts = Counts.of(graphs)
    if not fits(capacity, counts):
        needs = counts.columns(capacity).tolist()
        raise ValueError(
            f"batch needs {needs} (structures, atoms, bonds, angles[, short, long bonds])"
            f" plus one padding atom and bond; capacity {capacity} leaves {room(capacity).tolist()}"
        )
    short = short_capacity - counts.short_bonds
    long = capacity.bonds - short_capacity - counts.long_bonds
    empties = [
        _empty(cutoffs, 0, f"empty slot {k}") for k in range(len(graphs), capacity.structures)
    ]
    dummy = _dummy(
        cutoffs,
        atoms=capacity.atoms - counts.atoms,
        short=short,
        long=long,
        angles=capacity.angles - counts.angles,
    )
    return [*graphs, *empties, dummy]


def collate_padded(
    graphs: Sequence[CrystalGraph],
    capacity: Capacity,
    labels: Sequence[FrameLabels] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[GraphBatch, LabelBatch | None]:
    """Collate ``graphs`` (and their labels) padded to ``capacity``; padding labels masked.

    Returns:
        (batch, labels): shapes fixed by the capacity, ``capacity.structures + 1`` structures.
    """
    padded = pad_graphs(graphs, capacity)
    batch = collate(padded, dtype=dtype)
    if labels is None:
        return batch, None
    missing = SimpleNamespace(energy_per_atom=None, forces=None, stress=None, magmoms=None)
    all_labels = [*labels, *[missing] * (len(padded) - len(graphs))]
    return batch, collate_labels(all_labels, [g.n_atoms for g in padded], dtype=dtype)


def unpad(value: torch.Tensor, n_real: int) -> torch.Tensor:
    """The real rows of a padded per-structure or per-atom output: ``value[:n_real]``."""
    return value[:n_real]
