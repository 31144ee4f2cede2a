"""First fit on many lanes at once: the same guarantees as the plain loop, as tight a packing."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fastchgnet.data.capacity import packing_capacity
from fastchgnet.data.capacity import room as _room
from fastchgnet.data.first_fit import first_fit, first_fit_lanes
from fastchgnet.data.packing import _items


def _case(n: int, seed: int, per_batch: int):
    rng = np.random.default_rng(seed)
    atoms = np.clip(np.round(rng.lognormal(np.log(12), 0.8, n)), 1, 200).astype(np.int64)
    bonds = (atoms * rng.uniform(20, 60, n)).astype(np.int64)
    angles = (bonds * rng.uniform(0, 8, n)).astype(np.int64)
    short = (bonds * rng.uniform(0, 0.4, n)).astype(np.int64)
    sizes = np.stack([atoms, bonds, angles, short], axis=1)
    room = _room(packing_capacity(sizes, per_batch))
    return _items(sizes, room), rng.permutation(n), room


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 400),
    seed=st.integers(0, 5),
    per_batch=st.integers(1, 12),
    open_bins=st.integers(1, 6),
    lane_length=st.integers(2, 40),
)
def test_lanes_pack_every_structure_once_within_room(n, seed, per_batch, open_bins, lane_length):
    items, order, room = _case(n, seed, per_batch)
    members, lengths = first_fit_lanes(items, order, room, open_bins, lane_length)
    assert sorted(members.tolist()) == list(range(n))
    assert lengths.sum() == n
    assert (lengths > 0).all()
    for batch in np.split(members, np.cumsum(lengths)[:-1]):
        assert (items[batch].sum(axis=0) <= room).all()


def test_lanes_pack_as_tightly_as_the_plain_loop():
    items, order, room = _case(30_000, 1, 32)
    _, lengths = first_fit_lanes(items, order, room, 8, lane_length=1024)
    plain = first_fit(items, order, room, 8)
    assert len(lengths) <= len(plain) * 1.01


def test_lanes_are_deterministic():
    items, order, room = _case(5_000, 2, 16)
    a = first_fit_lanes(items, order, room, 8, lane_length=256)
    b = first_fit_lanes(items, order, room, 8, lane_length=256)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_column_without_room_does_not_decide_which_batch_closes():
    # No angles anywhere (room 0): the fullest batch by atoms closes, not the first one.
    items = np.array([[1, 2, 20, 0], [1, 9, 20, 0], [1, 9, 20, 0]], dtype=np.int64)
    room = np.array([4, 10, 100, 0], dtype=np.int64)
    order = np.arange(3)
    assert first_fit(items, order, room, open_bins=2) == [[1], [0], [2]]
    members, lengths = first_fit_lanes(items, order, room, 2, lane_length=3)
    assert sorted(members.tolist()) == [0, 1, 2]
    assert lengths.sum() == 3
