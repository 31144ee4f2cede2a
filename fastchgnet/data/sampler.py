"""Balanced, size-bucketed batch plans for data-parallel training.

``plan_batches`` is a pure function: from per-structure costs (atoms + bonds + angles, as the
FastCHGNet paper) it makes one epoch's global steps, each a list of ``world_size`` rank batches
of structure indices, such that

1. every index appears exactly once per epoch;
2. a global batch holds structures of similar size: structures are sorted by cost (ties broken
   at random), cut into *size pools* of ``size_pool`` global batches (the first pool has a
   random length, so pool borders move every epoch), shuffled inside each pool and cut into
   global batches; the order of global batches is shuffled. Similar sizes keep padding small;
3. inside each global batch the ranks get near-equal cost: round-robin LPT with a cardinality
   limit (sort descending; each round gives the next ``world_size`` largest structures to the
   ranks from lightest to heaviest, so every rank gets ``batch_size`` structures), then
   pairwise swaps between the heaviest and the lightest rank while a swap narrows their gap.

The paper lets each rank take the smallest and largest remaining structure in turn.

The short end of an epoch: with ``N = n_full * W * b + r`` structures, the ``n_full`` full steps
come first (shuffled) and the ``r`` left-over structures form the last step, every rank getting
``r // W`` or ``r // W + 1``. When ``0 < r < W`` and a full step exists, that step and the
left-overs are split into two steps of near-equal count instead, so no rank is empty. A rank
list is empty only when that cannot be done: fewer structures than ranks, or ``batch_size == 1``.
All plans are deterministic given (costs, world_size, batch_size, seed, epoch, size_pool).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from fastchgnet.data.plan_ahead import RankPlanSampler

Plan = list[list[list[int]]]

#: Steps balanced together in one vectorised swap pass (bounds the swap matrices' memory).
_STEP_CHUNK = 1024


def structure_costs(sizes: np.ndarray) -> np.ndarray:
    """(N,) int64 cost of each structure: atoms + bonds + angles. ``sizes``: (N, 3)."""
    sizes = np.asarray(sizes)
    if sizes.ndim != 2 or sizes.shape[1] != 3:
        raise ValueError(f"sizes must be (N, 3) atoms, bonds, angles; got shape {sizes.shape}")
    return sizes.sum(axis=1).astype(np.int64)


def _check(costs: Sequence[float], world_size: int, batch_size: int) -> np.ndarray:
    costs = np.asarray(costs, dtype=np.float64)
    if costs.ndim != 1:
        raise ValueError(f"costs must be 1-D (one per structure), got shape {costs.shape}")
    if not np.isfinite(costs).all() or (costs < 0).any():
        raise ValueError("costs must be finite and non-negative")
    if world_size < 1 or batch_size < 1:
        raise ValueError(
            f"need world_size >= 1 and batch_size >= 1, got {world_size}, {batch_size}"
        )
    return costs


def _global_batches(
    costs: np.ndarray, global_size: int, rng: np.random.Generator, size_pool: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(n_full, global_size) full global batches in shuffled order, and the left-overs."""
    n = costs.shape[0]
    if size_pool is None:
        order = rng.permutation(n)
    else:
        order = rng.permutation(n)
        order = order[np.argsort(costs[order], kind="stable")]
        pool = global_size * size_pool
        first = int(rng.integers(1, size_pool + 1)) * global_size
        borders = [0, *range(first, n, pool), n]
        for start, stop in itertools.pairwise(borders):
            order[start:stop] = rng.permutation(order[start:stop])
    n_full = n // global_size
    full = order[: n_full * global_size].reshape(n_full, global_size)
    return full[rng.permutation(n_full)], order[n_full * global_size :]


def _tail_steps(full: np.ndarray, rest: np.ndarray, costs: np.ndarray, world_size: int):
    """The last step(s): see the module docstring. Returns (full steps, list of tail arrays)."""
    if rest.shape[0] == 0:
        return full, []
    global_size = full.shape[1] if full.shape[0] else 0
    if rest.shape[0] >= world_size or full.shape[0] == 0 or global_size < 2 * world_size:
        return full, [rest]
    merged = np.concatenate([full[-1], rest])
    merged = merged[np.argsort(-costs[merged], kind="stable")]
    return full[:-1], [merged[0::2], merged[1::2]]


def _balance(items: np.ndarray, costs: np.ndarray, world_size: int, swaps: int) -> np.ndarray:
    """Assign each row's items to ranks: (S, n) indices (-1 = none) -> (S, W, ceil(n / W))."""
    n_steps, n = items.shape
    per_rank = -(-n // world_size)
    items = np.pad(items, ((0, 0), (0, per_rank * world_size - n)), constant_values=-1)
    item_cost = np.where(items >= 0, costs[items], 0.0)
    order = np.argsort(-item_cost, axis=1, kind="stable")
    items = np.take_along_axis(items, order, axis=1)
    item_cost = np.take_along_axis(item_cost, order, axis=1)
    rows = np.arange(n_steps)[:, None]
    out = np.full((n_steps, world_size, per_rank), -1, dtype=np.int64)
    loads = np.zeros((n_steps, world_size))
    for t in range(per_rank):
        lightest_first = np.argsort(loads, axis=1, kind="stable")
        out[rows, lightest_first, t] = items[:, t * world_size : (t + 1) * world_size]
        loads[rows, lightest_first] += item_cost[:, t * world_size : (t + 1) * world_size]
    for _ in range(swaps):
        if not _swap_once(out, costs):
            break
    return out


def _swap_once(out: np.ndarray, costs: np.ndarray) -> bool:
    """One swap per step between its heaviest and lightest rank, where that narrows their gap."""
    n_steps = out.shape[0]
    rows = np.arange(n_steps)
    cost = np.where(out >= 0, costs[out], np.nan)
    loads = np.nansum(cost, axis=2)
    heavy, light = loads.argmax(axis=1), loads.argmin(axis=1)
    gap = loads[rows, heavy] - loads[rows, light]
    delta = cost[rows, heavy][:, :, None] - cost[rows, light][:, None, :]  # (S, k, k)
    new_gap = np.abs(gap[:, None, None] - 2.0 * delta)
    new_gap = np.where(np.isfinite(delta) & (delta > 0), new_gap, np.inf).reshape(n_steps, -1)
    best = new_gap.argmin(axis=1)
    improves = new_gap[rows, best] < gap * (1 - 1e-12) - 1e-9
    if not improves.any():
        return False
    s = rows[improves]
    a, b = np.divmod(best[improves], out.shape[2])
    moved = out[s, heavy[s], a].copy()
    out[s, heavy[s], a] = out[s, light[s], b]
    out[s, light[s], b] = moved
    return True


def plan_batches(
    costs: Sequence[float],
    world_size: int,
    batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    *,
    size_pool: int | None = 16,
    swaps: int = 64,
) -> Plan:
    """One epoch's plan: ``plan[step][rank]`` is a list of structure indices.

    Args:
        costs: (N,) cost of each structure (atoms + bonds + angles; see ``structure_costs``).
        world_size: number of ranks W.
        batch_size: structures per rank per step b (the global batch is W * b).
        seed, epoch: the plan is a deterministic function of these (and the rest).
        size_pool: global batches per size pool; ``None`` draws global batches uniformly at
            random (no size grouping, larger padding), balancing only within them.
        swaps: most swap passes per step after LPT.

    Returns:
        ``ceil(N / (W * b))`` steps (see the module docstring for the last one or two).
    """
    costs = _check(costs, world_size, batch_size)
    if costs.shape[0] == 0:
        return []
    rng = np.random.default_rng([seed, epoch])
    full, rest = _global_batches(costs, world_size * batch_size, rng, size_pool)
    full, tail = _tail_steps(full, rest, costs, world_size)
    blocks = [full[i : i + _STEP_CHUNK] for i in range(0, full.shape[0], _STEP_CHUNK)]
    blocks += [t[None, :] for t in tail]
    plan: Plan = []
    for block in blocks:
        assigned = _balance(block, costs, world_size, swaps)
        plan.extend([[r[r >= 0].tolist() for r in step] for step in assigned])
    return plan


def plan_random_batches(
    costs: Sequence[float], world_size: int, batch_size: int, seed: int = 0, epoch: int = 0
) -> Plan:
    """Baseline: shuffle, then cut consecutive runs of ``batch_size`` per rank (as
    ``DistributedSampler``), no balancing. Same step count and tail rule as ``plan_batches``."""
    costs = _check(costs, world_size, batch_size)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(costs.shape[0])
    global_size = world_size * batch_size
    plan: Plan = []
    for start in range(0, order.shape[0], global_size):
        step = order[start : start + global_size]
        plan.append([part.tolist() for part in np.array_split(step, world_size)])
    return plan


def rank_loads(plan: Plan, costs: Sequence[float]) -> np.ndarray:
    """(n_steps, W) total cost of every rank's batch."""
    costs = np.asarray(costs, dtype=np.float64)
    return np.array([[costs[r].sum() for r in step] for step in plan], dtype=np.float64)


def load_cv(plan: Plan, costs: Sequence[float]) -> np.ndarray:
    """(n_steps,) coefficient of variation (std / mean, population std) of per-rank cost."""
    loads = rank_loads(plan, costs)
    mean = loads.mean(axis=1)
    return np.divide(loads.std(axis=1), mean, out=np.zeros_like(mean), where=mean > 0)


class BalancedBatchSampler(RankPlanSampler):
    """This rank's batches of ``plan_batches`` (see ``RankPlanSampler``)."""

    def __init__(
        self,
        costs: Sequence[float],
        batch_size: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        size_pool: int | None = 16,
    ) -> None:
        self.costs = _check(costs, world_size, batch_size)
        self.batch_size, self.size_pool = batch_size, size_pool
        super().__init__(world_size, rank, seed)

    def _make_plan(self, epoch: int) -> Plan:
        return plan_batches(
            self.costs,
            self.world_size,
            self.batch_size,
            self.seed,
            epoch,
            size_pool=self.size_pool,
        )

    def load_cv(self) -> float:
        """Mean over steps of the coefficient of variation of per-rank cost this epoch."""
        return float(load_cv(self.plan(), self.costs).mean()) if len(self) else 0.0

    def __len__(self) -> int:
        return -(-self.costs.shape[0] // (self.world_size * self.batch_size))
