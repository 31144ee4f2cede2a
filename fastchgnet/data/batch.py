"""GraphBatch: many crystal graphs as flat tensors, indices offset; and collate.

Every field is listed once in ``FIELDS`` with its shape, level and meaning. Structures are
concatenated: atoms of structure 0 first, then structure 1, ... The same holds for angles.
Bonds shorter than the bond cutoff (the bond graph's nodes) of all structures come first, then
all longer bonds, so the bond graph is the slice ``bonds[:n_short_bonds]``. Directed edges are
implied by the bonds: edge ``b`` (``b < n_bonds``) points ``i -> j`` of bond ``b`` and edge
``n_bonds + b`` points ``j -> i``; ``angle_edges`` uses these global edge ids, and only short
bonds' edges.

Padding (to fixed capacities for compiled code) appends one dummy structure that owns all
padding atoms, bonds and angles, so no real output changes; see DESIGN.md "The batch".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from fastchgnet.data.graph import CrystalGraph

T = TypeVar("T")

#: name -> (shape, level, meaning). Level: per-atom, per-bond, per-angle or per-structure.
FIELDS: dict[str, tuple[str, str, str]] = {
    "atomic_numbers": ("(n_atoms,) int64", "atom", "Z of each atom"),
    "frac_coords": ("(n_atoms, 3) float", "atom", "fractional coordinates"),
    "atom_structure": ("(n_atoms,) int64", "atom", "structure each atom belongs to"),
    "lattice": ("(n_structures, 3, 3) float", "structure", "lattice vectors as rows, Å"),
    "n_atoms": ("(n_structures,) int64", "structure", "atoms per structure"),
    "bond_atoms": ("(n_bonds, 2) int64", "bond", "(i, j) global atom indices of each bond"),
    "bond_images": ("(n_bonds, 3) float", "bond", "cell offset of j as seen from i (integers)"),
    "bond_structure": ("(n_bonds,) int64", "bond", "structure each bond belongs to"),
    "angle_edges": ("(n_angles, 2) int64", "angle", "directed edges (e1, e2) of each angle"),
    "n_short_bonds": ("int", "batch", "bonds shorter than the bond cutoff; they come first"),
}


@dataclass
class GraphBatch:
    """A batch of crystal graphs as flat tensors. Shapes and meanings: see ``FIELDS``."""

    atomic_numbers: Tensor
    frac_coords: Tensor
    atom_structure: Tensor
    lattice: Tensor
    n_atoms: Tensor
    bond_atoms: Tensor
    bond_images: Tensor
    bond_structure: Tensor
    angle_edges: Tensor
    n_short_bonds: int

    @property
    def n_structures(self) -> int:
        """Structures in the batch (a symbol under a ``free_counts`` trace, not a constant)."""
        return self.lattice.shape[0]

    @property
    def n_bonds(self) -> int:
        """Bonds in the batch (a symbol under a symbolic trace, not a constant)."""
        return self.bond_atoms.shape[0]

    def to(
        self,
        device: torch.device | str,
        dtype: torch.dtype | None = None,
        non_blocking: bool = True,
    ) -> GraphBatch:
        """Move to ``device``; float fields are cast to ``dtype`` when given. A host-to-device
        copy from pinned memory with ``non_blocking`` runs asynchronously on the current stream."""
        return moved_to(self, device, dtype, non_blocking)

    def pin_memory(self) -> GraphBatch:
        """A copy in page-locked host memory (``DataLoader(pin_memory=True)`` calls this)."""
        return pinned(self)


def moved_to(
    container: T, device: torch.device | str, dtype: torch.dtype | None, non_blocking: bool = True
) -> T:
    """A copy of a dataclass of tensors on ``device``, float tensors cast to ``dtype`` when
    given; fields that are not tensors (e.g. ``n_short_bonds``) are kept as they are. A
    container from ``pinned`` goes to an accelerator in one copy per dtype (its buffers),
    every field a view of the copied buffer."""
    values = {f.name: getattr(container, f.name) for f in fields(container)}
    layout = getattr(container, "_joined", None)
    if layout is not None and torch.device(device).type != "cpu" and _intact(layout, values):
        for buffer, names, starts in layout:
            moved = buffer.to(device, non_blocking=non_blocking)
            if dtype is not None and moved.is_floating_point():
                moved = moved.to(dtype)
            values.update(_cut(moved, {k: values[k] for k in names}, starts))
        return type(container)(**values)
    for name, value in values.items():
        if isinstance(value, Tensor):
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            values[name] = value.to(device, non_blocking=non_blocking)
    return type(container)(**values)


def pinned(container: T) -> T:
    """A copy of a dataclass of tensors in page-locked host memory (needs CUDA), the tensors
    of each dtype laid out in one buffer (each starting on a 16-byte boundary), so that
    ``moved_to`` copies each dtype to the device in one transfer (a batch's 17 tensors in 4)
    instead of one per tensor; fields that are not tensors are kept as they are."""
    values = {f.name: getattr(container, f.name) for f in fields(container)}
    tensors = {k: v for k, v in values.items() if isinstance(v, Tensor)}
    layout = []
    for dtype in dict.fromkeys(v.dtype for v in tensors.values()):
        group = {k: v for k, v in tensors.items() if v.dtype == dtype}
        align = max(1, 16 // dtype.itemsize)
        starts, end = [], 0
        for value in group.values():
            starts.append(end)
            end += -(-value.numel() // align) * align
        # page-locked from the start where CUDA is (pin_memory() then returns it as it is)
        host = torch.zeros(end, dtype=dtype, pin_memory=torch.cuda.is_available())
        for value, view in zip(group.values(), _cut(host, group, starts).values(), strict=True):
            view.copy_(value)
        buffer = host.pin_memory()
        values.update(_cut(buffer, group, starts))
        layout.append((buffer, list(group), starts))
    out = type(container)(**values)
    out._joined = layout  # type: ignore[attr-defined]  # read by moved_to
    return out


def _cut(buffer: Tensor, shapes: dict[str, Tensor], starts: list[int]) -> dict[str, Tensor]:
    """``buffer`` (1-D) cut into views with the shapes of ``shapes``' tensors, the k-th
    starting at element ``starts[k]``."""
    return {
        name: buffer[start : start + like.numel()].view(like.shape)
        for (name, like), start in zip(shapes.items(), starts, strict=True)
    }


def _intact(layout: list, values: dict[str, Any]) -> bool:
    """Whether every field ``pinned`` laid out is still the view it made (a field replaced
    since, e.g. on a shallow copy, sends the container the per-tensor way)."""
    return all(
        _laid_out([values[n] for n in names], buffer.untyped_storage().data_ptr(), starts)
        for buffer, names, starts in layout
    )


def _laid_out(tensors: list[Any], base: int, starts: list[int]) -> bool:
    """Whether each of ``tensors`` is a plain view (contiguous, and neither a lazily negated
    nor a lazily conjugated one, whose flags a view of the storage loses) of the storage at
    address ``base``, the k-th starting at element ``starts[k]``."""
    return all(
        isinstance(v, Tensor)
        and v.is_contiguous()
        and not v.is_neg()
        and not v.is_conj()
        and v.untyped_storage().data_ptr() == base
        and v.storage_offset() == start
        for v, start in zip(tensors, starts, strict=True)
    )


def host_arrays(values: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """``values`` as numpy arrays of the same shapes. Off a CPU they come back in one
    device-to-host copy per dtype (``one_host_copy``): each copy makes the host wait for the
    device, so one wait instead of one per tensor."""
    if all(v.device.type == "cpu" for v in values.values()):
        return {k: v.detach().numpy() for k, v in values.items()}
    return one_host_copy(values)


def one_host_copy(values: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """``values`` (on one device) flattened and joined per dtype, copied to the host once
    per dtype, and cut back into arrays of their shapes (views of the joined array). Tensors
    that already are consecutive parts of one buffer (``joined_copy``'s) are not joined again."""
    out: dict[str, np.ndarray] = {}
    for group in _dtype_groups(values):
        flat, starts = _flat(group, reuse=True)
        out.update({k: v.numpy() for k, v in _cut(flat.cpu(), group, starts).items()})
    return out


def joined_copy(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``values`` on their device in one copy per dtype: each dtype's tensors are
    flattened and joined into one new buffer, and come back as views of it with their
    shapes, in order (``one_host_copy`` then takes each buffer to the host as it is)."""
    out: dict[str, Tensor] = {}
    for group in _dtype_groups(values):
        flat, starts = _flat(group, reuse=False)
        out.update(_cut(flat, group, starts))
    return out


def _dtype_groups(values: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """``values`` detached and grouped by dtype, in order of first appearance."""
    dtypes = dict.fromkeys(v.dtype for v in values.values())
    return [{k: v.detach() for k, v in values.items() if v.dtype == d} for d in dtypes]


def _flat(group: dict[str, Tensor], reuse: bool) -> tuple[Tensor, list[int]]:
    """One 1-D tensor holding ``group``'s tensors one after another, and where each starts:
    with ``reuse``, the buffer they already are consecutive plain parts of (``_laid_out``;
    no copy), else (or when they are not) a concatenation."""
    tensors = list(group.values())
    starts = np.cumsum([0] + [v.numel() for v in tensors])[:-1].tolist()
    first = tensors[0]
    offset = first.storage_offset()
    base = first.untyped_storage().data_ptr()
    if reuse and _laid_out(tensors, base, [offset + start for start in starts]):
        total = starts[-1] + tensors[-1].numel()
        return first.as_strided((total,), (1,), offset), starts
    return torch.cat([v.reshape(-1) for v in tensors]), starts


def tensors_of(container: object) -> list[Tensor]:
    """The tensor fields of a dataclass (e.g. a GraphBatch or LabelBatch), in field order."""
    values = (getattr(container, f.name) for f in fields(container))  # type: ignore[arg-type]
    return [v for v in values if isinstance(v, Tensor)]


def collate(graphs: Sequence[CrystalGraph], dtype: torch.dtype = torch.float32) -> GraphBatch:
    """Concatenate graphs into one ``GraphBatch`` with indices offset.

    Args:
        graphs: the crystal graphs (at least one).
        dtype: float dtype of coordinates, lattices and images.

    Returns:
        The batch; see ``FIELDS`` for shapes.
    """
    if len(graphs) == 0:
        raise ValueError("collate needs at least one graph")
    if len(graphs) == 1:  # an MD or single-structure call: no offsets to add
        return _one(graphs[0], dtype)
    return _many(graphs, dtype)


def _many(graphs: Sequence[CrystalGraph], dtype: torch.dtype) -> GraphBatch:
    """``collate`` of one or more graphs: indices offset, short bonds of all first."""
    n_atoms = np.array([g.n_atoms for g in graphs], dtype=np.int64)
    n_bonds = np.array([g.n_bonds for g in graphs], dtype=np.int64)
    n_short = np.array([g.n_short_bonds for g in graphs], dtype=np.int64)
    n_angles = np.array([g.n_angles for g in graphs], dtype=np.int64)
    structure_ids = np.arange(len(graphs))
    atom_offset = np.cumsum(n_atoms) - n_atoms
    total_bonds, total_short = int(n_bonds.sum()), int(n_short.sum())

    def global_bond(local: np.ndarray, owner_counts: np.ndarray) -> np.ndarray:
        """Global position of local bond ids (short bonds of all structures first)."""
        shape = (-1, *[1] * (local.ndim - 1))
        short = np.repeat(n_short, owner_counts).reshape(shape)
        short_offset = np.repeat(np.cumsum(n_short) - n_short, owner_counts)
        long_offset = np.repeat(np.cumsum(n_bonds - n_short) - (n_bonds - n_short), owner_counts)
        return np.where(
            local < short,
            short_offset.reshape(shape) + local,
            total_short + long_offset.reshape(shape) + local - short,
        )

    local_bonds = np.arange(total_bonds) - np.repeat(np.cumsum(n_bonds) - n_bonds, n_bonds)
    position = global_bond(local_bonds, n_bonds)
    bond_atoms = np.empty((total_bonds, 2), dtype=np.int64)
    bond_atoms[position] = (
        np.concatenate([g.bond_atoms for g in graphs]).reshape(-1, 2)
        + (np.repeat(atom_offset, n_bonds)[:, None])
    )
    bond_images = np.empty((total_bonds, 3), dtype=np.int64)
    bond_images[position] = np.concatenate([g.bond_images for g in graphs]).reshape(-1, 3)
    bond_structure = np.empty(total_bonds, dtype=np.int64)
    bond_structure[position] = np.repeat(structure_ids, n_bonds)

    # local edge e of a structure with B bonds: bond e mod B, reversed when e >= B
    local_edges = np.concatenate([g.angle_edges for g in graphs]).reshape(-1, 2)
    owner_bonds = np.repeat(n_bonds, n_angles)[:, None]
    reversed_edge = local_edges >= owner_bonds
    bond_of_edge = global_bond(local_edges - reversed_edge * owner_bonds, n_angles)
    angle_edges = bond_of_edge + reversed_edge * total_bonds

    def stacked(arrays: list[np.ndarray], join: Any = np.concatenate) -> torch.Tensor:
        # C order always: compiled graphs guard on strides, and a single Fortran-ordered
        # input (ASE's scaled positions) would otherwise pass through as a transposed view
        return torch.from_numpy(np.ascontiguousarray(join(arrays)))

    return GraphBatch(
        atomic_numbers=stacked([g.atomic_numbers for g in graphs]),
        frac_coords=stacked([g.frac_coords for g in graphs]).to(dtype),
        atom_structure=torch.from_numpy(np.repeat(structure_ids, n_atoms)),
        lattice=stacked([g.lattice for g in graphs], np.stack).to(dtype),
        n_atoms=torch.from_numpy(n_atoms),
        bond_atoms=torch.from_numpy(bond_atoms),
        bond_images=torch.from_numpy(bond_images).to(dtype),
        bond_structure=torch.from_numpy(bond_structure),
        angle_edges=torch.from_numpy(angle_edges.astype(np.int64)),
        n_short_bonds=total_short,
    )


def _one(graph: CrystalGraph, dtype: torch.dtype) -> GraphBatch:
    """``collate([graph])``: a graph stores its short bonds first and its angle edges as
    batch positions already (a bond, or bond + n_bonds reversed), so every index stays; about
    0.1 ms instead of 0.25 ms for an 8-atom MD step's graph. Arrays are copied, as there."""

    def copied(values: np.ndarray, shape: tuple[int, ...], numpy_dtype: Any = None) -> Tensor:
        return torch.from_numpy(np.array(values, dtype=numpy_dtype, order="C").reshape(shape))

    n_atoms, n_bonds = graph.n_atoms, graph.n_bonds
    return GraphBatch(
        atomic_numbers=copied(graph.atomic_numbers, (n_atoms,)),
        frac_coords=copied(graph.frac_coords, (n_atoms, 3)).to(dtype),
        atom_structure=torch.zeros(n_atoms, dtype=torch.int64),
        lattice=copied(graph.lattice, (1, 3, 3)).to(dtype),
        n_atoms=torch.tensor([n_atoms], dtype=torch.int64),
        bond_atoms=copied(graph.bond_atoms, (n_bonds, 2), np.int64),
        bond_images=copied(graph.bond_images, (n_bonds, 3), np.int64).to(dtype),
        bond_structure=torch.zeros(n_bonds, dtype=torch.int64),
        angle_edges=copied(graph.angle_edges, (graph.n_angles, 2), np.int64),
        n_short_bonds=graph.n_short_bonds,
    )
