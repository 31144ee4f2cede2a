"""The loop: a non-finite loss skips the step (weights untouched) and too many in a row stop
the run; a finite step changes the weights."""

from __future__ import annotations

import json

import pytest
import torch

from fastchgnet.data.cache import GraphDataset
from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.train.checkpoint import Progress
from fastchgnet.train.config import OptimConfig
from fastchgnet.train.data import collate_items
from fastchgnet.train.engine import TorchEngine
from fastchgnet.train.loop import NonFiniteLossError, train_epoch
from fastchgnet.train.loss import LossConfig
from fastchgnet.train.progress import EpochProgress
from tests.train.helpers import TINY_ARCHITECTURE, small_cache


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> list:
    dataset = GraphDataset(small_cache(tmp_path_factory.mktemp("loop") / "cache", n=12))
    return [collate_items([dataset[i] for i in range(k, k + 4)]) for k in (0, 4, 8)]


def _poison(batch: tuple) -> tuple:
    graphs, labels = batch
    labels = labels.to("cpu")
    labels.energy = labels.energy.clone()
    labels.energy[0] = float("nan")
    return graphs, labels


def _run(batches: list, max_bad_steps: int) -> tuple[FastCHGNet, Progress, list[dict]]:
    torch.manual_seed(0)
    model = FastCHGNet(**json.loads(TINY_ARCHITECTURE))
    engine = TorchEngine(model, OptimConfig(lr=1e-2), total_steps=10, global_batch=4)
    progress, snapshots = Progress(), []

    def snapshot(state: Progress, loss: float) -> None:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    reporter = EpochProgress(0, len(batches), 0, "lines", 1000, 0)
    train_epoch(
        engine,
        batches,
        LossConfig(),
        progress,
        reporter,
        max_bad_steps=max_bad_steps,
        on_step=snapshot,
    )
    return model, progress, snapshots


def test_non_finite_loss_skips_the_step_and_leaves_weights_untouched(batches) -> None:
    _, progress, snapshots = _run([batches[0], _poison(batches[1]), batches[2]], 3)
    assert progress.global_step == 3
    assert progress.bad_steps == 0
    for name, before in snapshots[0].items():
        assert torch.equal(before, snapshots[1][name]), name  # the poisoned step changed nothing
    changed = [not torch.equal(snapshots[1][n], snapshots[2][n]) for n in snapshots[1]]
    assert any(changed)  # the next finite step trained


def test_too_many_non_finite_losses_in_a_row_stop_the_run(batches) -> None:
    poisoned = [_poison(b) for b in batches]
    with pytest.raises(NonFiniteLossError, match="2 non-finite losses in a row"):
        _run(poisoned, 2)
