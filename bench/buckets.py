"""Several capacity buckets for balanced (not packed) batches: a bench helper, not used at run
time (training pads packed batches to one ``fastchgnet.data.capacity.Capacity``).

``derive_capacities`` picks a handful of shapes from the batches ``sampler.plan_batches`` makes;
``padding_waste_per_capacity`` reports padded / real entries per capacity.
"""

from __future__ import annotations

import numpy as np

from fastchgnet.data.capacity import Capacity
from fastchgnet.data.sampler import Plan, plan_batches, structure_costs


def batch_totals(plan: Plan, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per rank batch: (n_steps, W) structure counts and (n_steps, W, 3) summed sizes."""
    sizes = np.asarray(sizes, dtype=np.int64)
    counts = np.array([[len(r) for r in step] for step in plan], dtype=np.int64)
    totals = np.array([[sizes[r].sum(axis=0) for r in step] for step in plan], dtype=np.int64)
    return counts, totals.reshape(len(plan), -1, 3)


def _group_waste(totals: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """(Q, Q) padded entries if batches cuts[i]:cuts[j] (sorted by cost) share one capacity."""
    q = cuts.shape[0]
    waste = np.full((q, q), np.inf)
    prefix = np.concatenate([[0], np.cumsum(totals.sum(axis=1))])
    segment_max = [totals[cuts[k] : cuts[k + 1]].max(axis=0) for k in range(q - 1)]
    for i in range(q - 1):
        running = np.zeros(3, dtype=np.int64)
        for j in range(i + 1, q):
            running = np.maximum(running, segment_max[j - 1])
            count = cuts[j] - cuts[i]
            waste[i, j] = count * running.sum() - (prefix[cuts[j]] - prefix[cuts[i]])
    return waste


def derive_capacities(
    sizes: np.ndarray,
    batch_size: int,
    n_buckets: int,
    *,
    world_size: int = 1,
    seed: int = 0,
    epochs: int = 2,
    headroom: float = 0.02,
    size_pool: int | None = 16,
) -> list[Capacity]:
    """A few capacities that fit the rank batches ``plan_batches`` makes, with little padding.

    The plans of ``epochs`` epochs are made; their rank batches, sorted by cost, are cut into
    ``n_buckets`` groups minimising the padded entries (dynamic programming over 256 quantile
    cut points); each group's capacity is its largest atoms, bonds and angles, plus
    ``headroom``. A last *overflow* capacity (the ``batch_size`` largest structures in every
    column) guarantees that any batch fits; other epochs' batches rarely need it.

    Args:
        sizes: (N, 3) atoms, bonds, angles per structure.

    Returns:
        ``n_buckets + 1`` capacities (fewer when groups coincide), ascending.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    costs = structure_costs(sizes)
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
    totals = []
    for epoch in range(epochs):
        plan = plan_batches(costs, world_size, batch_size, seed, epoch, size_pool=size_pool)
        counts, sums = batch_totals(plan, sizes)
        totals.append(sums[counts > 0])
    totals = np.concatenate(totals) if totals else np.zeros((0, 3), dtype=np.int64)
    totals = totals[np.argsort(totals.sum(axis=1), kind="stable")]
    caps: set[Capacity] = set()
    if totals.shape[0]:
        cuts = np.unique(np.linspace(0, totals.shape[0], 257).round().astype(np.int64))
        waste = _group_waste(totals, cuts)
        best, back = _partition(waste, n_buckets)
        for start, stop in _cuts_from(back, best, n_buckets, cuts.shape[0] - 1):
            top = totals[cuts[start] : cuts[stop]].max(axis=0) * (1 + headroom)
            caps.add(Capacity(batch_size, *np.ceil(top).astype(int).tolist()))
    largest = -np.sort(-sizes, axis=0)[:batch_size].sum(axis=0)
    caps.add(Capacity(batch_size, *largest.tolist()))
    return sorted(caps, key=lambda c: (c.atoms + c.bonds + c.angles, c))


def _partition(waste: np.ndarray, n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """DP: best[k, j] least waste covering cut points 0..j with k + 1 groups."""
    q = waste.shape[0]
    best = np.full((n_buckets, q), np.inf)
    back = np.zeros((n_buckets, q), dtype=np.int64)
    best[0] = waste[0]
    for k in range(1, n_buckets):
        total = best[k - 1][:, None] + waste  # (i, j): first k groups end at i, then i..j
        back[k] = total.argmin(axis=0)
        best[k] = total.min(axis=0)
    return best, back


def _cuts_from(back: np.ndarray, best: np.ndarray, n_buckets: int, last: int):
    k = int(np.argmin(best[:, last]))  # fewer groups when more would not help
    groups, stop = [], last
    while k >= 0:
        start = int(back[k, stop]) if k > 0 else 0
        groups.append((start, stop))
        stop, k = start, k - 1
    return groups[::-1]


def assign_buckets(plan: Plan, sizes: np.ndarray, capacities: list[Capacity]) -> np.ndarray:
    """(n_steps, W) index of the smallest capacity each rank batch fits (capacities ascending)."""
    counts, totals = batch_totals(plan, sizes)
    limits = np.array([[c.atoms, c.bonds, c.angles] for c in capacities])  # (K, 3)
    room = np.array([c.structures for c in capacities])
    fits = (totals[:, :, None, :] <= limits).all(axis=-1) & (counts[:, :, None] <= room)
    if not fits.any(axis=-1).all():
        step, rank = np.argwhere(~fits.any(axis=-1))[0]
        raise ValueError(f"step {step} rank {rank}: batch {totals[step, rank]} fits no capacity")
    return fits.argmax(axis=-1)


def padding_waste_per_capacity(
    plan: Plan, sizes: np.ndarray, capacities: list[Capacity]
) -> list[dict]:
    """Per capacity: rank batches using it and padding waste = padded / real entries
    (atoms + bonds + angles; empty rank batches are not counted)."""
    counts, totals = batch_totals(plan, sizes)
    bucket = assign_buckets(plan, sizes, capacities)
    report = []
    for k, cap in enumerate(capacities):
        use = (bucket == k) & (counts > 0)
        real = int(totals[use].sum())
        padded = int(use.sum()) * (cap.atoms + cap.bonds + cap.angles) - real
        report.append(
            {
                "capacity": cap,
                "batches": int(use.sum()),
                "real": real,
                "padded": padded,
                "waste": padded / real if real else 0.0,
            }
        )
    return report
