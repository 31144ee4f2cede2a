"""Epoch plans built one epoch ahead, in a background thread, so no rank waits for them.

A plan is a pure function of the epoch (and the sampler's fixed inputs), so every rank builds
the same one on its own; at MPtrj size that takes seconds (bench/bench_sampler.py). The
samplers keep their plans in a ``PlanAhead``: ``ahead(epoch + 1)`` starts the next epoch's
plan while the current epoch trains, and ``get`` hands it over at once when it is done. The
work is numpy on large arrays, which releases the interpreter lock for most of its time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from torch.utils.data import Sampler

Plan = TypeVar("Plan")


class PlanAhead(Generic[Plan]):
    """Plans per epoch from ``make_plan(epoch)``; at most the asked epoch and one ahead kept."""

    def __init__(self, make_plan: Callable[[int], Plan]) -> None:
        self.make_plan = make_plan
        self._plans: dict[int, Future[Plan]] = {}
        self._lock = threading.Lock()

    def get(self, epoch: int) -> Plan:
        """The plan of ``epoch``: built now, or waited for if it is being built ahead.
        Plans of earlier epochs are dropped."""
        with self._lock:
            future = self._plans.get(epoch)
            if future is None:
                future = Future()
                future.set_running_or_notify_cancel()
                self._plans[epoch] = future
                build_here = True
            else:
                build_here = False
            for old in [e for e in self._plans if e < epoch]:
                del self._plans[old]
        if build_here:
            self._build(epoch, future)
        return future.result()

    def ahead(self, epoch: int) -> None:
        """Start building ``epoch``'s plan in a background thread (no-op if built or begun)."""
        with self._lock:
            if epoch in self._plans:
                return
            future: Future[Plan] = Future()
            future.set_running_or_notify_cancel()
            self._plans[epoch] = future
        thread = threading.Thread(
            target=self._build, args=(epoch, future), name=f"plan-epoch-{epoch}", daemon=True
        )
        thread.start()

    def ready(self, epoch: int) -> bool:
        """Whether ``epoch``'s plan is built (``get`` returns it without waiting)."""
        with self._lock:
            future = self._plans.get(epoch)
        return future is not None and future.done()

    def _build(self, epoch: int, future: Future[Plan]) -> None:
        try:
            future.set_result(self.make_plan(epoch))
        except BaseException as exc:  # handed to whoever calls get
            future.set_exception(exc)

    def __getstate__(self) -> dict[str, Any]:  # futures and locks do not pickle: plans rebuild
        return {"make_plan": self.make_plan}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["make_plan"])


class RankPlanSampler(Sampler[list[int]]):
    """A batch sampler for ``DataLoader`` that yields this rank's column of an epoch's plan
    (``plan[step][rank]``); every rank builds the same plan from its fixed inputs, the seed
    and the epoch, so ranks agree without communication. Subclasses give ``_make_plan(epoch)``
    and ``__len__``. Call ``set_epoch`` before each epoch; ``plan_ahead`` during the one
    before builds the next plan in the background."""

    def __init__(self, world_size: int, rank: int, seed: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.world_size, self.rank, self.seed, self.epoch = world_size, rank, seed, 0
        self._plans: PlanAhead[list] = PlanAhead(self._make_plan)

    def _make_plan(self, epoch: int) -> list:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan ``__iter__`` follows."""
        self.epoch = int(epoch)

    def plan(self) -> list:
        """The whole epoch's plan (all ranks), cached per epoch; built in the background if
        ``plan_ahead`` asked for it earlier."""
        return self._plans.get(self.epoch)

    def plan_ahead(self, epoch: int) -> None:
        """Start building ``epoch``'s plan in a background thread (call it during the epoch
        before, so ``set_epoch(epoch)`` then ``plan()`` need not wait)."""
        self._plans.ahead(int(epoch))

    def __iter__(self) -> Iterator[list[int]]:
        for step in self.plan():
            yield step[self.rank]
