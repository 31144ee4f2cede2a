"""Split by material id: a partition, deterministic, materials never straddle splits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastchgnet.data.split import (
    assign_split,
    material_unit_interval,
    split_by_frame_tail,
    split_by_material,
)

material_lists = st.lists(st.sampled_from([f"mp-{k}" for k in range(40)]), max_size=200)


@settings(max_examples=100, deadline=None)
@given(material_lists, st.integers(0, 5))
def test_split_is_a_partition_of_frames(ids, seed):
    split = split_by_material(ids, seed=seed)
    joined = np.sort(np.concatenate(split))
    assert joined.tolist() == list(range(len(ids)))


@settings(max_examples=100, deadline=None)
@given(material_lists, st.integers(0, 5))
def test_frames_of_one_material_never_straddle_splits(ids, seed):
    split = split_by_material(ids, seed=seed)
    owners = [{ids[i] for i in part} for part in split]
    assert not owners[0] & owners[1]
    assert not owners[0] & owners[2]
    assert not owners[1] & owners[2]


@settings(max_examples=50, deadline=None)
@given(material_lists, st.integers(0, 5))
def test_split_is_deterministic_and_stable_under_added_materials(ids, seed):
    split = split_by_material(ids, seed=seed)
    again = split_by_material([*ids, "mp-new-1", "mp-new-2"], seed=seed)
    for old, new in zip(split, again, strict=True):
        assert set(old.tolist()) <= set(new.tolist())
    for name, part in zip(("train", "val", "test"), split, strict=True):
        assert all(assign_split(ids[i], seed=seed) == name for i in part)


def test_fractions_are_met_in_expectation():
    ids = [f"mp-{k}" for k in range(20_000)]
    split = split_by_material(ids, (0.8, 0.1, 0.1), seed=7)
    shares = np.array([len(p) for p in split]) / len(ids)
    assert np.allclose(shares, [0.8, 0.1, 0.1], atol=0.01)


def test_hash_is_stable_across_runs():
    # a fixed value guards against an accidental change of hash (which would reshuffle splits)
    assert material_unit_interval("mp-149", seed=0) == pytest.approx(0.35148724060525594)
    assert material_unit_interval("mp-149", 0) != material_unit_interval("mp-149", 1)


def test_bad_fractions_are_rejected():
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_material(["a"], (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="three"):
        split_by_material(["a"], (0.5, 0.5))


@settings(max_examples=100, deadline=None)
@given(material_lists)
def test_frame_tail_split_is_a_partition_with_each_material_in_order(ids):
    split = split_by_frame_tail(ids, (0.8, 0.1, 0.1))
    joined = np.sort(np.concatenate(split))
    assert joined.tolist() == list(range(len(ids)))
    for material in set(ids):
        frames = [i for i, m in enumerate(ids) if m == material]
        parts = [[i for i in part if ids[i] == material] for part in split]
        assert parts[0] + parts[1] + parts[2] == frames  # train, then val, then the tail
        assert len(parts[0]) == round(0.8 * len(frames))


def test_frame_tail_split_holds_out_the_last_fifth_of_a_relaxation():
    ids = ["run"] * 49 + ["other"] * 10
    train, val, test = split_by_frame_tail(ids, (0.8, 0.0, 0.2))
    assert train[:39].tolist() == list(range(39))
    assert test.tolist() == [*range(39, 49), 57, 58]
    assert val.size == 0
