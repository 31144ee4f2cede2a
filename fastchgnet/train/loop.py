"""The training and evaluation loops: batches in, optimiser steps and metrics out.

``train_epoch`` knows nothing of files or configs beyond what it is handed: the engine does the
step, ``on_step`` (the caller) writes checkpoints, ``EpochProgress`` reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fastchgnet.compile.denormals import flush_denormals
from fastchgnet.data.batch import GraphBatch
from fastchgnet.data.labels import LabelBatch
from fastchgnet.data.padding import real_structures
from fastchgnet.train.checkpoint import Progress
from fastchgnet.train.loss import LossConfig, loss_terms, total_loss
from fastchgnet.train.metrics import MetricSums
from fastchgnet.train.progress import EpochProgress, log

if TYPE_CHECKING:
    from fastchgnet.compile import CapturedModel


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row: the run stops."""


@dataclass
class EpochResult:
    """What an epoch's training part did: mean loss over finite steps, steps, skipped steps,
    structures seen (this rank), whether ``max_steps`` stopped it."""

    mean_loss: float
    steps: int
    skipped: int
    structures: int
    stopped: bool


@flush_denormals()  # the whole epoch: see fastchgnet.compile.denormals
def train_epoch(
    engine: object,
    batches: Iterable[tuple[GraphBatch, LabelBatch]],
    loss_config: LossConfig,
    progress: Progress,
    reporter: EpochProgress,
    *,
    max_bad_steps: int,
    max_steps: int = 0,
    on_step: Callable[[Progress, float], None] | None = None,
    captured: CapturedModel | None = None,
) -> EpochResult:
    """Train over ``batches`` (this rank's share of one epoch), updating ``progress``.

    With ``captured`` (the engine's model, compiled for the batches' one padded shape) the
    forward and loss run as its captured graph and the backward as that graph's backward;
    the batches must then be padded (``data.padding``), and only real structures count.

    A step whose loss is non-finite on any rank is skipped by all ranks (no backward, no
    update) and logged; ``max_bad_steps`` of them in a row raise ``NonFiniteLossError``.
    ``on_step(progress, loss)`` runs after every step (logs, checkpoints; loss is NaN for a
    skipped step); with ``max_steps`` > 0 the epoch stops once ``progress.global_step``
    reaches it.
    """
    total, steps, skipped, structures = 0.0, 0, 0, 0
    for graphs, labels in batches:
        batch = graphs.to(engine.device)
        targets = labels.to(engine.device)
        if captured is not None:
            loss, _ = captured.loss(batch, targets)
        else:
            prediction = engine.forward(batch)
            loss = total_loss(loss_terms(prediction, targets, loss_config), loss_config)
        progress.step_in_epoch += 1
        progress.global_step += 1
        if engine.all_finite(loss):
            engine.backward(loss)
            engine.step()
            progress.bad_steps = 0
            value = float(loss.detach())
            total, steps = total + value, steps + 1
        else:
            progress.bad_steps += 1
            skipped += 1
            value = float("nan")
            log(
                f"step {progress.global_step}: non-finite loss, step skipped "
                f"({progress.bad_steps} in a row, limit {max_bad_steps})",
                engine.rank,
            )
            if progress.bad_steps >= max_bad_steps:
                raise NonFiniteLossError(
                    f"{progress.bad_steps} non-finite losses in a row (run.max_bad_steps); "
                    "lower the learning rate or check the data"
                )
        structures += real_structures(batch) if captured is not None else batch.n_structures
        reporter.update(value, engine.lr)
        if on_step is not None:
            on_step(progress, value)
        if max_steps and progress.global_step >= max_steps:
            return EpochResult(total / max(steps, 1), steps, skipped, structures, True)
    return EpochResult(total / max(steps, 1), steps, skipped, structures, False)


def evaluate(
    model: torch.nn.Module,
    batches: Iterable[tuple[GraphBatch, LabelBatch]],
    device: torch.device | str,
) -> MetricSums:
    """Metrics of ``model`` over ``batches`` (this rank's share), summed over all ranks.

    The model is put in eval mode for the call (no derivative graph kept) and restored.
    """
    was_training = model.training
    model.eval()
    metrics = MetricSums()
    try:
        with torch.no_grad(), flush_denormals():
            for graphs, labels in batches:
                prediction = model(graphs.to(device))
                metrics.add(prediction, labels.to(device))
    finally:
        model.train(was_training)
    metrics.all_reduce()
    return metrics
