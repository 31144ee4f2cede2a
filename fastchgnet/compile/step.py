"""A training step on a padded batch: forward (e, f, s, m) + loss, backward, optimiser step.

The forward and the loss run as one captured graph (``CapturedModel.loss``; eager when the
CapturedModel is eager); the backward is that graph's compiled first-order backward; Adam is
the fused implementation where torch has it (one kernel over all parameters). Each stage is an
NVTX range (``fastchgnet.profiling.nvtx``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from fastchgnet.compile.capture import CapturedModel
from fastchgnet.compile.denormals import flush_denormals
from fastchgnet.data.batch import GraphBatch
from fastchgnet.data.labels import LabelBatch
from fastchgnet.profiling.nvtx import BACKWARD, FORWARD, OPTIMIZER, STEP, stage


def make_adam(parameters: Iterable[nn.Parameter], lr: float = 3e-4) -> torch.optim.Adam:
    """Adam over the trainable ``parameters``; fused (one multi-tensor kernel) when supported."""
    trainable = [p for p in parameters if p.requires_grad]
    try:
        return torch.optim.Adam(trainable, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(trainable, lr=lr, foreach=True)


class TrainStep:
    """``step(batch, labels) -> loss``: one optimiser update of ``captured.model``.

    Args:
        captured: the model's CapturedModel (compiled or eager), in training mode.
        optimizer: e.g. ``make_adam(model.parameters())``.
    """

    def __init__(self, captured: CapturedModel, optimizer: torch.optim.Optimizer):
        self.captured = captured
        self.optimizer = optimizer

    def __call__(self, batch: GraphBatch, labels: LabelBatch) -> Tensor:
        """One update; returns the loss (0-d, detached; reading it syncs a GPU)."""
        self.captured.model.train()
        with stage(STEP), flush_denormals():
            self.optimizer.zero_grad(set_to_none=True)
            with stage(FORWARD):  # forward and loss are one graph
                loss, _ = self.captured.loss(batch, labels)
            with stage(BACKWARD):
                loss.backward()
            with stage(OPTIMIZER):
                self.optimizer.step()
        return loss.detach()
