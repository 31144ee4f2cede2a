"""Engine: the learning rate scales with the global batch; the schedule is warm-up + cosine."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fastchgnet.train.config import OptimConfig
from fastchgnet.train.engine import TorchEngine, make_scheduler, scaled_lr


@pytest.mark.parametrize(
    ("rule", "expected"), [("linear", 3e-4 * 4), ("sqrt", 3e-4 * 2), ("none", 3e-4)]
)
def test_learning_rate_scales_with_global_batch(rule: str, expected: float) -> None:
    config = OptimConfig(lr=3e-4, lr_reference_batch=128, lr_scaling=rule)
    assert math.isclose(scaled_lr(config, 512), expected)


def test_cosine_schedule_runs_from_lr_to_floor_after_warmup() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = make_scheduler(optimizer, OptimConfig(warmup_steps=2, min_lr_ratio=0.1), 12)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))  # after warm-up: falls


def test_frozen_parameters_are_not_given_to_the_optimizer() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)
    engine = TorchEngine(model, OptimConfig(), total_steps=10, global_batch=16)
    given = {id(p) for group in engine.optimizer.param_groups for p in group["params"]}
    assert id(model[0].weight) not in given
    assert id(model[1].weight) in given
