"""A resume with ``--set optim.lr=...`` / ``optim.weight_decay=...`` trains with the new values
from the checkpoint's step on: the engine's restored optimiser and schedule carried the old
lr, initial_lr, weight_decay and base_lrs (the announced change was silently ignored)."""

from __future__ import annotations

import json

import pytest
import torch

from fastchgnet.train.config import OptimConfig
from fastchgnet.train.engine import TorchEngine
from tests.train.helpers import run_one_rank

#: warm-up then cosine over 20 steps, so the factor at the restored step is not 1
SCHEDULE = {"warmup_steps": 2, "min_lr_ratio": 0.1, "lr_scaling": "none"}


def _stepped(engine: TorchEngine, steps: int) -> TorchEngine:
    for _ in range(steps):
        engine.module(torch.ones(1, 2)).sum().backward()
        engine.step(torch.zeros(()))
    return engine


def _engine(**settings: float) -> TorchEngine:
    torch.manual_seed(0)
    return TorchEngine(torch.nn.Linear(2, 1), OptimConfig(**SCHEDULE, **settings), 20, 4)


def test_a_resumed_engine_takes_the_new_lr_and_weight_decay_at_the_checkpoint_step() -> None:
    saved = _stepped(_engine(lr=1e-3, weight_decay=0.0), 5).state_dict()
    resumed = _engine(lr=4e-3, weight_decay=0.25)
    resumed.load_state_dict(saved)
    fresh = _stepped(_engine(lr=4e-3, weight_decay=0.25), 5)  # a run begun with the new values
    for engine in (resumed, fresh):
        group = engine.optimizer.param_groups[0]
        assert (group["initial_lr"], group["weight_decay"]) == (4e-3, 0.25)
        assert engine.scheduler.base_lrs == [4e-3]
    assert resumed.lr == fresh.lr == pytest.approx(4e-3 * fresh.scheduler.lr_lambdas[0](5))
    assert resumed.scheduler.get_last_lr() == fresh.scheduler.get_last_lr()
    _stepped(resumed, 3), _stepped(fresh, 3)
    assert resumed.lr == fresh.lr


def test_an_unchanged_resume_restores_the_schedule_exactly() -> None:
    straight = _stepped(_engine(lr=1e-3, weight_decay=0.1), 7)
    resumed = _engine(lr=1e-3, weight_decay=0.1)
    resumed.load_state_dict(_stepped(_engine(lr=1e-3, weight_decay=0.1), 7).state_dict())
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    assert resumed.scheduler.state_dict() == straight.scheduler.state_dict()


DEEPSPEED_RESUME = """
import json, torch
from fastchgnet.train import collectives
from fastchgnet.train.config import OptimConfig
from fastchgnet.train.engine import DEFAULT_DEEPSPEED_JSON, DeepSpeedEngine
collectives.init_process_group(60)
schedule = dict(warmup_steps=2, min_lr_ratio=0.1, lr_scaling="none")
def engine(lr, weight_decay):
    torch.manual_seed(0)
    optim = OptimConfig(lr=lr, weight_decay=weight_decay, **schedule)
    return DeepSpeedEngine(torch.nn.Linear(2, 1), optim, 20, 4, DEFAULT_DEEPSPEED_JSON)
old = engine(1e-3, 0.0)
for _ in range(5):
    old.backward(old.forward(torch.ones(1, 2)).sum())
    old.step(torch.zeros(()))
new = engine(4e-3, 0.25)
new.load_state_dict(old.state_dict())
group = new.optimizer_inner.param_groups[0]
expected = 4e-3 * new.scheduler.lr_lambdas[0](5)
print("RESULT", json.dumps([group["initial_lr"], group["weight_decay"], new.scheduler.base_lrs,
                            new.lr == group["lr"] == expected]))
"""


@pytest.mark.slow
def test_a_resumed_deepspeed_engine_takes_the_new_lr_and_weight_decay() -> None:
    """The same on one DeepSpeed rank (ZeRO 0): DeepSpeed's optimiser wraps ours."""
    pytest.importorskip("deepspeed")
    stdout = run_one_rank(DEEPSPEED_RESUME)
    result = next(line for line in stdout.splitlines() if line.startswith("RESULT"))
    assert json.loads(result.split(" ", 1)[1]) == [4e-3, 0.25, [4e-3], True]
