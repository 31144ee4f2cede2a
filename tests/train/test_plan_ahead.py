"""The sampler's plan is off the critical path: the next epoch's plan is built in the
background during the current epoch, and it is the same plan every rank would build."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fastchgnet.data.capacity import packing_capacity
from fastchgnet.data.packing import PackedBatchSampler, plan_packed_batches
from fastchgnet.data.plan_ahead import PlanAhead
from fastchgnet.train.loading import EpochBatches

PLAN_SECONDS = 0.6


def _sizes(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    atoms = np.clip(np.round(rng.lognormal(np.log(12), 0.8, n)), 1, 200).astype(np.int64)
    bonds = (atoms * rng.uniform(20, 60, n)).astype(np.int64)
    return np.stack([atoms, bonds, (bonds * rng.uniform(0, 8, n)).astype(np.int64)], axis=1)


class SlowPacked(PackedBatchSampler):
    """A packed sampler whose plans take PLAN_SECONDS longer, as an MPtrj-size plan would."""

    def _make_plan(self, epoch):
        time.sleep(PLAN_SECONDS)
        return super()._make_plan(epoch)


def _epoch(batches: EpochBatches, step_seconds: float) -> tuple[list[list[int]], float]:
    """All batches of the epoch, each followed by a simulated step; and the wait for the
    first one (the time between the epoch's start and its first batch)."""
    start = time.perf_counter()
    iterator = iter(batches)
    first = next(iterator)
    wait = time.perf_counter() - start
    out = [first]
    for batch in iterator:
        time.sleep(step_seconds)
        out.append(batch)
    return out, wait


def test_next_epochs_plan_is_ready_when_the_epoch_starts():
    sizes = _sizes(600)
    capacity = packing_capacity(sizes, 8)
    indices = np.arange(1000, 1600)
    expected = {e: plan_packed_batches(sizes, 2, capacity, 3, e) for e in (0, 1, 2)}
    step_seconds = 2 * PLAN_SECONDS / len(expected[0])  # an epoch twice as long as a plan
    sampler = SlowPacked(sizes, capacity, world_size=2, rank=1, seed=3)
    batches = EpochBatches(sampler, indices, epoch=0)
    for epoch in (0, 1, 2):
        batches.set_epoch(epoch)
        got, wait = _epoch(batches, step_seconds)
        if epoch == 0:
            assert wait >= PLAN_SECONDS  # nothing planned it ahead: the control
        else:
            assert wait < PLAN_SECONDS / 3
        assert got == [[int(indices[k]) for k in step[1]] for step in expected[epoch]]


def test_resumed_epoch_skips_steps_and_still_plans_ahead():
    sizes = _sizes(300)
    capacity = packing_capacity(sizes, 4)
    sampler = PackedBatchSampler(sizes, capacity, world_size=1, seed=0)
    batches = EpochBatches(sampler, np.arange(300), epoch=2, skip=3)
    plan = plan_packed_batches(sizes, 1, capacity, 0, 2)
    assert list(batches) == [step[0] for step in plan[3:]]
    assert len(batches) == len(plan) - 3
    deadline = time.perf_counter() + 10
    while not sampler._plans.ready(3) and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert sampler._plans.ready(3)  # epoch 3's plan was started in the background


def test_plan_ahead_builds_in_a_thread_and_hands_errors_to_get():
    started = threading.Event()

    def make(epoch: int) -> list:
        started.set()
        if epoch == 5:
            raise ValueError("bad epoch 5")
        return [[[epoch]]]

    plans = PlanAhead(make)
    plans.ahead(1)
    assert started.wait(5)
    assert plans.get(1) == [[[1]]]
    assert plans.ready(1)
    assert not plans.ready(2)
    plans.ahead(5)
    with pytest.raises(ValueError, match="bad epoch 5"):
        plans.get(5)


def test_evaluation_batches_do_not_plan_ahead():
    sizes = _sizes(100)
    sampler = PackedBatchSampler(sizes, packing_capacity(sizes, 4), world_size=1)
    assert len(list(EpochBatches(sampler, np.arange(100), epoch=0, ahead=False))) == len(sampler)
    time.sleep(0.3)  # a started plan of 100 structures would be done by now
    assert not sampler._plans.ready(1)


def test_the_last_epoch_plans_no_epoch_after_it():
    """A run of 3 epochs plans epoch 2 during epoch 1, and nothing during epoch 2: a plan
    nobody uses would only take a core from the last epoch and the final evaluation."""
    sizes = _sizes(100)
    sampler = PackedBatchSampler(sizes, packing_capacity(sizes, 4), world_size=1)
    batches = EpochBatches(sampler, np.arange(100), epoch=1, epochs=3)
    list(batches)
    deadline = time.perf_counter() + 10
    while not sampler._plans.ready(2) and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert sampler._plans.ready(2)
    batches.set_epoch(2)
    list(batches)
    assert 3 not in sampler._plans._plans  # ``ahead`` registers a plan before its thread runs
