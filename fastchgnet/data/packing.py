"""Packed batch plans: every rank batch filled up to one fixed capacity.

``plan_batches`` gives every rank ``batch_size`` structures; on a long-tailed size distribution
the batches' totals then span orders of magnitude and padding them to a few capacities wastes
much (see bench/bench_sampler.py). ``plan_packed_batches`` instead fills each rank batch up to
one ``Capacity`` (a variable number of structures), so there is one shape to compile, padding
is only the last structure's slack, and, since every batch is nearly full, ranks carry
near-equal cost without further balancing.

Packing: structures in a seeded random order go into the first of ``open_bins`` open batches
with room (first fit, run on many parts of the order at once: ``data.first_fit``); when none
has room, the fullest open batch is closed. Ranks get near-equal cost by grouping: inside each
run of ``group_steps`` steps' worth of batches, batches are sorted by cost (atoms + bonds +
angles, as the paper) and consecutive ``world_size`` form a step; the steps are then shuffled.
(Measured on 100k MPtrj-like sizes, W=8: mean per-step CV 0.065 without it, 0.002 with
``group_steps`` 64.) The last step: when fewer than ``world_size`` batches remain, their
structures are dealt to all ranks largest first (each to the lightest rank with room), falling
back to the batches as they are (some ranks empty) if that does not fit; then structures move
or swap between its heaviest and lightest rank while that narrows their cost gap and both
still fit. A plan for MPtrj's 1.58M structures takes a few seconds (bench/bench_plan.py; the
per-structure loop before took about a minute), and ``PackedBatchSampler`` builds the next
epoch's plan in the background. Deterministic given (sizes, world_size, capacity, seed, epoch,
open_bins, group_steps).
"""

from __future__ import annotations

import itertools

import numpy as np

from fastchgnet.data.capacity import Capacity
from fastchgnet.data.capacity import room as room_of
from fastchgnet.data.first_fit import COST, first_fit_lanes
from fastchgnet.data.plan_ahead import RankPlanSampler
from fastchgnet.data.sampler import Plan, load_cv, structure_costs

#: Steps whose batches are sorted by cost together before they are dealt to ranks.
GROUP_STEPS = 64


def _items(sizes: np.ndarray, room: np.ndarray) -> np.ndarray:
    """(N, len(room)) per structure: 1, atoms, bonds, angles (, short bonds, long bonds)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.ndim != 2 or sizes.shape[1] not in (3, 4):
        raise ValueError(
            "sizes must be (N, 3) atoms, bonds, angles or (N, 4) with bond-graph bonds; "
            f"got shape {sizes.shape}"
        )
    if room.shape[0] == 6 and sizes.shape[1] != 4:
        raise ValueError("a capacity with short_bonds needs (N, 4) sizes with bond-graph bonds")
    columns = [np.ones(sizes.shape[0], dtype=np.int64), sizes[:, 0], sizes[:, 1], sizes[:, 2]]
    if room.shape[0] == 6:
        columns += [sizes[:, 3], sizes[:, 1] - sizes[:, 3]]
    items = np.stack(columns, axis=1)
    too_big = np.flatnonzero((items > room).any(axis=1))
    if too_big.size:
        k = int(too_big[0])
        raise ValueError(
            f"structure {k} (sizes {sizes[k].tolist()}) exceeds the capacity "
            f"{room[1:].tolist()} (after the padding reserve); raise the capacity"
        )
    return items


def _swap_once(step: list[list[int]], items: np.ndarray, room: np.ndarray) -> bool:
    """Move or swap one structure between the heaviest and lightest rank of ``step`` (in place)
    if that narrows their cost gap and both batches still fit."""
    width = room.shape[0]
    loads = np.array([items[r].sum(axis=0) if r else np.zeros(width, np.int64) for r in step])
    cost = loads[:, COST].sum(axis=1)
    heavy, light = int(cost.argmax()), int(cost.argmin())
    gap = cost[heavy] - cost[light]
    if gap <= 0 or not step[heavy]:
        return False
    a = items[step[heavy]]  # (p, width)
    b = (
        np.vstack([items[step[light]], np.zeros((1, width), np.int64)])
        if step[light]
        else np.zeros((1, width), np.int64)
    )
    delta = a[:, None, :] - b[None, :, :]  # moving a to light and b to heavy
    fits = ((loads[heavy] - delta <= room) & (loads[light] + delta <= room)).all(axis=2)
    moved = delta[:, :, COST].sum(axis=2)
    new_gap = np.where(fits & (moved > 0), np.abs(gap - 2 * moved), np.inf)
    i, j = np.unravel_index(int(new_gap.argmin()), new_gap.shape)
    if not new_gap[i, j] < gap:
        return False
    x = step[heavy].pop(i)
    if j < len(step[light]):
        step[heavy].append(step[light].pop(j))
    step[light].append(x)
    return True


def _deal(batches: list[list[int]], items: np.ndarray, room: np.ndarray, world_size: int):
    """Spread the last (< world_size) batches' structures over all ranks, if they fit."""
    pool = sorted((i for b in batches for i in b), key=lambda i: -items[i, COST].sum())
    if len(pool) < world_size:
        return batches + [[] for _ in range(world_size - len(batches))]
    ranks: list[list[int]] = [[] for _ in range(world_size)]
    loads = np.zeros((world_size, room.shape[0]), dtype=np.int64)
    for index in pool:
        fits = np.flatnonzero((loads + items[index] <= room).all(axis=1))
        if not fits.size:
            return batches + [[] for _ in range(world_size - len(batches))]
        k = int(fits[np.argmin(loads[fits, COST].sum(axis=1))])
        ranks[k].append(index)
        loads[k] += items[index]
    return ranks


def plan_packed_batches(
    sizes: np.ndarray,
    world_size: int,
    capacity: Capacity,
    seed: int = 0,
    epoch: int = 0,
    *,
    open_bins: int = 8,
    swaps: int = 16,
    group_steps: int = GROUP_STEPS,
) -> Plan:
    """One epoch's plan of packed rank batches: ``plan[step][rank]`` lists structure indices.

    Args:
        sizes: (N, 3) atoms, bonds, angles per structure; (N, 4) with bond-graph bonds last,
            needed when ``capacity.short_bonds`` is set.
        world_size: ranks W.
        capacity: the shape every rank batch is padded to; batches are filled up to it,
            keeping one atom and one bond free for the padding structure.
        seed, epoch: the plan is a deterministic function of these (and the rest).
        open_bins: batches filled at once (more packs tighter, costs more time).
        swaps: most moves or swaps between the heaviest and lightest rank of the last step.
        group_steps: steps whose batches are sorted by cost together (see the module doc).

    Raises:
        ValueError: a structure that does not fit the capacity, named by its index.
    """
    if world_size < 1 or open_bins < 1:
        raise ValueError(f"need world_size >= 1 and open_bins >= 1, got {world_size}, {open_bins}")
    room = room_of(capacity)
    items = _items(sizes, room)
    if items.shape[0] == 0:
        return []
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(items.shape[0])
    members, lengths = first_fit_lanes(items, order, room, open_bins)
    n_full = lengths.shape[0] // world_size * world_size
    plan = _steps_of_similar_cost(members, lengths[:n_full], items, world_size, group_steps, rng)
    if n_full < lengths.shape[0]:
        cuts = np.cumsum(lengths)[n_full - 1 :] if n_full else np.cumsum([0, *lengths])
        tail = [members[a:b].tolist() for a, b in itertools.pairwise(cuts.tolist())]
        tail = _deal(tail, items, room, world_size)
        for _ in range(swaps):
            if not _swap_once(tail, items, room):
                break
        plan.append(tail)
    return plan


def _steps_of_similar_cost(
    members: np.ndarray,
    lengths: np.ndarray,
    items: np.ndarray,
    world_size: int,
    group_steps: int,
    rng: np.random.Generator,
) -> Plan:
    """Deal the batches ``lengths`` cuts from ``members`` (their count a multiple of
    ``world_size``) into steps: inside each run of ``group_steps * world_size`` batches, sort
    by cost and cut consecutive ``world_size``; then shuffle the steps."""
    if lengths.shape[0] == 0:
        return []
    starts = np.cumsum(lengths) - lengths
    cost = np.add.reduceat(items[members[: lengths.sum()], COST].sum(axis=1), starts)
    window = group_steps * world_size
    order = np.concatenate(
        [
            start + np.argsort(cost[start : start + window], kind="stable")
            for start in range(0, lengths.shape[0], window)
        ]
    )
    steps = order.reshape(-1, world_size)[rng.permutation(lengths.shape[0] // world_size)]
    flat = members.tolist()
    starts_list, ends_list = starts.tolist(), (starts + lengths).tolist()
    return [[flat[starts_list[b] : ends_list[b]] for b in step] for step in steps.tolist()]


class PackedBatchSampler(RankPlanSampler):
    """This rank's batches of ``plan_packed_batches`` (see ``RankPlanSampler``): a variable
    number of structures, every batch filled to ``capacity``."""

    def __init__(
        self,
        sizes: np.ndarray,
        capacity: Capacity,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        open_bins: int = 8,
    ) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.capacity, self.open_bins = capacity, open_bins
        super().__init__(world_size, rank, seed)

    def _make_plan(self, epoch: int) -> Plan:
        return plan_packed_batches(
            self.sizes,
            self.world_size,
            self.capacity,
            self.seed,
            epoch,
            open_bins=self.open_bins,
        )

    def load_cv(self) -> float:
        """Mean over steps of the coefficient of variation of per-rank cost this epoch
        (cost = atoms + bonds + angles)."""
        plan = self.plan()
        return float(load_cv(plan, structure_costs(self.sizes[:, :3])).mean()) if plan else 0.0

    def __len__(self) -> int:
        return len(self.plan())
