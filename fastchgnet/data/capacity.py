"""Capacities: the fixed shapes padded batches have, and everything about fitting graphs in them.

A ``Capacity`` counts real structures, atoms, undirected bonds (``short_bonds`` of them
bond-graph bonds, padded apart from the others when set) and angles. Padding
(``data.padding``) adds one dummy structure that needs one atom and one bond (a bond-graph
bond when those are counted, since padding angles pair one with its reverse): that reserve is
``PADDING_RESERVE``, and ``room`` is a capacity less it. One fit check, ``fits``, serves
padding, the packer (``room`` in array form) and the compiled potential. Capacities come from
the graphs at hand (``tight_capacity``), from a data set's sizes (``packing_capacity``) or
with a margin for graphs that change (``with_headroom``), and a tighter one for graphs that
shrank (``shrunk``); a batch run by a captured program with dynamic sizes takes its own sizes
within one (``fitted``); ``padding_waste`` reports the cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass

import numpy as np

from fastchgnet.data.graph import CrystalGraph


@dataclass(frozen=True, order=True)
class Capacity:
    """Fixed shape a rank batch is padded to (the dummy padding structure comes on top of
    ``structures``): structures, atoms, bonds (undirected; edges are twice this), angles,
    short_bonds (bond-graph bonds; None: every bond counts as one, see ``padding.pad_graphs``).
    """

    structures: int
    atoms: int
    bonds: int
    angles: int
    short_bonds: int | None = None


#: Kept free for the padding dummy, per ``room`` column: structures, atoms, bonds, angles,
#: short (bond-graph) bonds, long bonds.
PADDING_RESERVE = np.array([0, 1, 1, 0, 1, 0])


def room(capacity: Capacity) -> np.ndarray:
    """What real structures may use, per column: structures, atoms, bonds, angles and, when
    the capacity sets ``short_bonds``, short and long bonds (each kind has its own slots)."""
    limits = [capacity.structures, capacity.atoms, capacity.bonds, capacity.angles]
    if capacity.short_bonds is not None:
        limits += [capacity.short_bonds, capacity.bonds - capacity.short_bonds]
    return np.array(limits) - PADDING_RESERVE[: len(limits)]


@dataclass(frozen=True)
class Counts:
    """What a list of real graphs needs: structures, atoms, short (bond-graph) bonds, long
    bonds (atom graph only) and angles."""

    structures: int
    atoms: int
    short_bonds: int
    long_bonds: int
    angles: int

    @classmethod
    def of(cls, graphs: Sequence[CrystalGraph]) -> Counts:
        short = sum(g.n_short_bonds for g in graphs)
        return cls(
            structures=len(graphs),
            atoms=sum(g.n_atoms for g in graphs),
            short_bonds=short,
            long_bonds=sum(g.n_bonds for g in graphs) - short,
            angles=sum(g.n_angles for g in graphs),
        )

    @property
    def entries(self) -> int:
        """Atoms + bonds + angles: the work these graphs carry (``entries`` of a capacity)."""
        return self.atoms + self.short_bonds + self.long_bonds + self.angles

    def columns(self, capacity: Capacity) -> np.ndarray:
        """These counts in ``room(capacity)``'s columns (without ``short_bonds`` every bond
        is a bond-graph bond)."""
        bonds = self.short_bonds + self.long_bonds
        values = [self.structures, self.atoms, bonds, self.angles]
        if capacity.short_bonds is not None:
            values += [self.short_bonds, self.long_bonds]
        return np.array(values)


def peak(counts: Sequence[Counts]) -> Counts:
    """The largest of ``counts`` in every column: what a capacity for each of them needs."""
    return Counts(*(max(column) for column in zip(*(astuple(c) for c in counts), strict=True)))


def fits(capacity: Capacity, counts: Counts) -> bool:
    """Whether graphs with ``counts`` pad to ``capacity`` (the padding reserve included)."""
    return bool((counts.columns(capacity) <= room(capacity)).all())


def entries(capacity: Capacity) -> int:
    """Atoms + bonds + angles of a capacity: the work one padded call does."""
    return capacity.atoms + capacity.bonds + capacity.angles


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` >= ``value``."""
    return -(-value // multiple) * multiple


def with_headroom(
    counts: Counts, headroom: float, round_to: int, at_least: Capacity | None = None
) -> Capacity:
    """A capacity for ``counts`` with a margin: structures exact, atoms + the padding atom,
    short and long bonds times ``1 + headroom`` and angles times ``(1 + headroom)^2``, plus
    one, rounded up to ``round_to``; never below ``at_least`` (a capacity being grown)."""

    def margin(n: int, factor: float) -> int:
        return round_up(math.ceil(n * factor) + 1, round_to)

    short = margin(counts.short_bonds, 1 + headroom)
    long = margin(counts.long_bonds, 1 + headroom)
    angles = margin(counts.angles, (1 + headroom) ** 2)
    structures, atoms = counts.structures, counts.atoms + 1
    if at_least is not None:
        structures = max(structures, at_least.structures)
        atoms = max(atoms, at_least.atoms)
        short = max(short, at_least.short_bonds or 0)
        long = max(long, at_least.bonds - (at_least.short_bonds or 0))
        angles = max(angles, at_least.angles)
    return Capacity(structures, atoms, short + long, angles, short_bonds=short)


#: Atoms, long bonds and angles of a ``fitted`` batch are multiples of this, and at least it
FIT_ROUND = 32


def fitted(capacity: Capacity, counts: Counts, round_to: int = FIT_ROUND) -> Capacity:
    """The shape of one batch with ``counts`` run by a captured program with dynamic sizes
    (``compile.CapturedModel(dynamic=True)``): structures and short bonds those of
    ``capacity`` (the program is specialised on them), atoms (with the padding atom), long
    bonds and angles the batch's own, rounded up to ``round_to`` and at least ``round_to``
    (compilers specialise sizes 0 and 1, and the padding needs one long bond).

    Raises:
        ValueError: ``capacity`` has no ``short_bonds``, or ``counts`` do not fit it.
    """
    if capacity.short_bonds is None:
        raise ValueError(f"fitted batches need a capacity with short_bonds, got {capacity}")
    if not fits(capacity, counts):
        raise ValueError(f"graphs needing {counts} do not fit capacity {capacity}")

    def size(n: int) -> int:
        return max(round_up(n, round_to), round_to)

    short = capacity.short_bonds
    return Capacity(
        structures=capacity.structures,
        atoms=size(counts.atoms + 1),
        bonds=short + size(counts.long_bonds),
        angles=size(counts.angles),
        short_bonds=short,
    )


def shrunk(
    current: Capacity,
    counts: Counts,
    headroom: float,
    round_to: int,
    shrink_below: float,
    at_least: Capacity | None = None,
) -> Capacity | None:
    """A tighter capacity for ``counts`` (``with_headroom``, never below ``at_least``) when
    it holds at most ``shrink_below`` of ``current``'s entries, else None (keep ``current``).
    Every shrink divides the entries by ``1 / shrink_below`` or more: a geometric ladder."""
    candidate = with_headroom(counts, headroom, round_to, at_least)
    return candidate if entries(candidate) <= shrink_below * entries(current) else None


def tight_capacity(graph_lists: Sequence[Sequence[CrystalGraph]]) -> Capacity:
    """The smallest capacity every list of graphs pads to: each column the most any list
    needs, plus the padding reserve; short and other bonds get separate slots."""
    counts = [Counts.of(graphs) for graphs in graph_lists]
    short = max(c.short_bonds for c in counts) + 1
    long = max(c.long_bonds for c in counts)
    return Capacity(
        structures=max(c.structures for c in counts),
        atoms=max(c.atoms for c in counts) + 1,
        bonds=short + long,
        angles=max(c.angles for c in counts),
        short_bonds=short,
    )


def packing_capacity(
    sizes: np.ndarray, structures_per_batch: float, *, max_structures: int | None = None
) -> Capacity:
    """A capacity holding about ``structures_per_batch`` average structures, never smaller
    than the largest structure (plus the padding reserve) in any column.

    Args:
        sizes: (N, 3) atoms, bonds, angles per structure, or (N, 4) with the bond-graph
            (short) bonds last: then short and other bonds get separate slots
            (``Capacity.short_bonds``), so the bond convolutions run on bond-graph bonds only.
        structures_per_batch: mean structures a packed batch should hold (the batch size).
        max_structures: cap on structures per batch (default 4x ``structures_per_batch``).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    count = max_structures or int(np.ceil(4 * structures_per_batch))
    if sizes.ndim == 2 and sizes.shape[1] == 4:  # atoms, angles, short bonds, long bonds
        sizes = np.stack([sizes[:, 0], sizes[:, 2], sizes[:, 3], sizes[:, 1] - sizes[:, 3]], axis=1)
        reserve = PADDING_RESERVE[[1, 3, 4, 5]]
    else:
        reserve = PADDING_RESERVE[1:4]
    target = np.ceil(sizes.mean(axis=0) * structures_per_batch).astype(np.int64)
    limits = [int(x) for x in np.maximum(target, sizes.max(axis=0) + reserve)]
    if len(limits) == 4:
        atoms, angles, short, long = limits
        return Capacity(count, atoms, short + long, angles, short_bonds=short)
    return Capacity(count, *limits)


@dataclass
class PaddingTally:
    """Padded calls counted as they run: batches, real entries (atoms + bonds + angles of the
    real graphs) and padding entries (the capacity's entries less the real ones)."""

    batches: int = 0
    real: int = 0
    padded: int = 0

    def add(self, real: int, capacity: Capacity | None) -> None:
        """Count one batch with ``real`` entries padded to ``capacity`` (None: unpadded)."""
        self.batches += 1
        self.real += real
        self.padded += 0 if capacity is None else entries(capacity) - real

    @property
    def waste(self) -> float:
        """Padding entries per real entry (0.25: a quarter more work than the real graphs)."""
        return self.padded / self.real if self.real else 0.0

    def report(self) -> dict[str, float]:
        """batches, real, padded and waste, as ``padding_waste`` gives them."""
        return {
            "batches": self.batches,
            "real": self.real,
            "padded": self.padded,
            "waste": self.waste,
        }


def padding_waste(
    plan: Sequence, sizes: np.ndarray, capacity: Capacity, fit: bool = False
) -> dict[str, float]:
    """Rank batches of ``plan`` (``plan[step][rank]`` lists of indices into ``sizes``, (N, 3+)
    atoms, bonds, angles, and with ``fit`` short bonds fourth) padded to ``capacity`` (``fit``:
    each to its ``fitted`` shape within it): their count, real and padded entries (atoms +
    bonds + angles) and the waste = padded / real (empty rank batches excluded)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    tally = PaddingTally()
    for step in plan:
        for rank in step:
            if len(rank):
                atoms, bonds, angles = (int(x) for x in sizes[rank, :3].sum(axis=0))
                shape = capacity
                if fit:
                    short = int(sizes[rank, 3].sum())
                    counts = Counts(len(rank), atoms, short, bonds - short, angles)
                    shape = fitted(capacity, counts)
                tally.add(atoms + bonds + angles, shape)
    return tally.report()
