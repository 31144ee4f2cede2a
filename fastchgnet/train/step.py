"""THE training step: the one that ``launcher/train.py`` runs, benchmarks time and profiles count.

``TrainStep(engine, loss_config, captured)(batch, labels)`` does one optimiser update on a
batch already on the engine's device:

    forward (+ loss)   eager model and ``model.loss.training_loss``, or the captured graph of
                       both (``CapturedModel.loss``, CUDA graphs on a GPU)
    backward           first-order backward; DeepSpeed all-reduces the gradients at its end
    agree              non-finite loss or gradients on any rank -> every rank skips (a
                       1-element all-reduce)
    optimizer          fused Adam, told on the device to skip (``engine.skip_if``)

Each stage is an NVTX range (``profiling.nvtx``). Nothing in the step reads a tensor on the
host: the loss, the finite-step count and the skips accumulate on the device in
``StepTotals``, and ``read()`` brings them to the host in one transfer when the caller logs
(after one all-reduce of the window's loss sum and finite steps, for the mean over ranks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from fastchgnet.compile.capture import CapturedModel
from fastchgnet.data.batch import GraphBatch
from fastchgnet.data.labels import LabelBatch
from fastchgnet.model.loss import LossConfig, training_loss
from fastchgnet.numerics import flush_denormals
from fastchgnet.profiling.nvtx import BACKWARD, FORWARD, LOSS, OPTIMIZER, STEP, stage
from fastchgnet.train.collectives import all_reduce

#: Columns of ``StepTotals.values``.
LOSS_SUM, FINITE, SKIPPED, LONGEST_RUN, RUN = range(5)


@dataclass
class Window:
    """What the steps since the last read did: this rank's mean loss over its finite steps
    (NaN when none), finite and skipped steps, the longest run of consecutive skips, the run
    at the end, and ``ranks_loss``: the mean loss over every rank's finite steps of the
    window (``mean_loss`` itself in one process)."""

    mean_loss: float
    finite: int
    skipped: int
    longest_run: int
    run: int
    ranks_loss: float = float("nan")


class StepTotals:
    """Device-side accumulators of the steps since the last ``read`` (5 float64 values)."""

    def __init__(self, device: torch.device, run: int = 0) -> None:
        self.values = torch.zeros(5, dtype=torch.float64, device=device)
        self.values[RUN] = run
        self.values[LONGEST_RUN] = run

    def add(self, loss: Tensor, skip: Tensor) -> None:
        """Count one step: its loss (0-d) and skip flag (0-d, 1.0 = skipped); no host read."""
        skip = skip.to(torch.float64)
        run = (self.values[RUN] + 1) * skip
        step = torch.stack(
            [
                torch.where(skip > 0, 0.0, loss.detach().to(torch.float64)),
                1 - skip,
                skip,
                torch.zeros_like(skip),
                torch.zeros_like(skip),
            ]
        )
        self.values += step
        self.values[RUN] = run
        self.values[LONGEST_RUN] = torch.maximum(self.values[LONGEST_RUN], run)

    def read(self) -> Window:
        """The window's totals on the host (the one synchronisation), then a new window that
        carries the current run of skips over. Every rank calls it at the same step (the
        loop's read steps: every rank runs every step), and first sums the window's loss and
        finite steps over the ranks in one all-reduce of a 2-element tensor on the device
        (the identity in one process), so ``Window.ranks_loss`` weights each rank by its
        finite steps: the mean over every rank's steps, as the epoch's loss."""
        ranks = all_reduce(self.values[LOSS_SUM : FINITE + 1])
        values = torch.cat([self.values, ranks]).tolist()
        loss_sum, finite, skipped, longest, run, ranks_sum, ranks_finite = values
        self.values.zero_()
        self.values[RUN] = run
        self.values[LONGEST_RUN] = run
        mean = loss_sum / finite if finite else float("nan")
        ranks_mean = ranks_sum / ranks_finite if ranks_finite else float("nan")
        return Window(mean, int(finite), int(skipped), int(longest), int(run), ranks_mean)


def nonfinite(grads: list[Tensor], device: torch.device) -> Tensor:
    """0-d float32 on ``device``: 1.0 where any of ``grads`` holds a NaN or an infinity (an
    empty list: 0.0), computed without a host read."""
    if not grads:
        return torch.zeros((), device=device)
    norms = torch.stack(torch._foreach_norm(grads))
    return (~torch.isfinite(norms.sum())).to(torch.float32)


class TrainStep:
    """One optimiser update of ``engine.module`` per call; see the module docstring.

    Args:
        engine: ``train.engine.TorchEngine`` or ``DeepSpeedEngine`` (owns the optimiser).
        loss_config: the training loss.
        captured: the engine's model captured for the batches' padded shape; None: eager.
        bad_run: consecutive skipped steps before this step (a resumed run's).
    """

    def __init__(
        self,
        engine: object,
        loss_config: LossConfig,
        captured: CapturedModel | None = None,
        bad_run: int = 0,
    ) -> None:
        self.engine, self.loss_config, self.captured = engine, loss_config, captured
        self.totals = StepTotals(engine.device, bad_run)

    def loss(self, batch: GraphBatch, labels: LabelBatch) -> Tensor:
        """The training loss (0-d, differentiable) of a batch, eager or captured."""
        if self.captured is not None:
            with stage(FORWARD):  # forward and loss are one graph
                loss, _ = self.captured.loss(batch, labels)
            return loss
        with stage(FORWARD):
            prediction = self.engine.forward(batch)
        with stage(LOSS):
            return training_loss(prediction, labels, self.loss_config)

    @flush_denormals()
    def __call__(self, batch: GraphBatch, labels: LabelBatch) -> None:
        """One update from a batch on the engine's device (padding-only batches included:
        their loss and gradient are zero, and the rank still joins every collective)."""
        with stage(STEP):
            graphs = self.captured.stats.graphs if self.captured is not None else 0
            loss = self.loss(batch, labels)
            # keep the loss's value: a captured graph's outputs are static buffers
            value = loss.detach().clone()
            with stage(BACKWARD):
                start = time.perf_counter()
                self.engine.backward(loss)
                if self.captured is not None and self.captured.stats.graphs > graphs:
                    # a new graph's first backward compiles it (AOTAutograd compiles the
                    # backward lazily): count it with the forward's compile
                    self.captured.stats.compile_seconds += time.perf_counter() - start
            # every rank must skip together: the flag (a non-finite loss, or a finite loss with
            # non-finite gradients) is the max over ranks, on the device. After ZeRO 0's
            # all-reduce the gradients are the same on every rank, but under ZeRO 1 each rank
            # holds only its own slice of them (``engine.gradients``): their flags can differ,
            # so the gradients' flag joins the one collective too
            loss_flag = (~torch.isfinite(value)).to(torch.float32)
            grads_flag = nonfinite(self.engine.gradients(), value.device)
            skip = all_reduce(torch.maximum(loss_flag, grads_flag), "max")
            with stage(OPTIMIZER):
                self.engine.step(skip)
            self.totals.add(value, skip)

    def read(self) -> Window:
        """Bring the accumulated totals to the host (one synchronisation) and reset them."""
        return self.totals.read()


def standalone_step(
    model: torch.nn.Module,
    *,
    compiled: bool,
    backend: str = "inductor",
    lr: float = 3e-4,
    loss_config: LossConfig | None = None,
) -> TrainStep:
    """The training step of ``launcher/train.py`` around ``model`` (already on its device)
    with a one-process engine (fused Adam, constant ``lr``), for benchmarks and profiles:
    eager, or ``compiled`` (``training_capture`` with ``backend``) for padded batches."""
    from fastchgnet.train.config import OptimConfig
    from fastchgnet.train.engine import TorchEngine

    loss_config = loss_config or LossConfig()
    optim = OptimConfig(lr=lr, scheduler="constant")
    engine = TorchEngine(model, optim, total_steps=1, global_batch=1)
    captured = training_capture(model, loss_config, backend) if compiled else None
    return TrainStep(engine, loss_config, captured)


def training_capture(
    model: torch.nn.Module, loss_config: LossConfig, backend: str = "inductor"
) -> CapturedModel:
    """The captured model of ``launcher/train.py``'s training step. On a CPU its graph has
    dynamic sizes (``CapturedModel(dynamic=True)``): every batch is padded to the run's
    capacity in structures and short bonds only (``train.loading.PaddedCollate(fit=True)``),
    which cut a packed step at batch 16 by 1.30x; its trace is kept in the compiled store
    (``compile.store.stored_trace``). On a GPU it keeps the capacity's one shape, which its
    CUDA graph replays."""
    from fastchgnet.compile.store import default_store

    dynamic = dynamic_sizes(next(model.parameters()).device.type)
    return CapturedModel(
        model, loss_config=loss_config, backend=backend, dynamic=dynamic, store=default_store()
    )


def dynamic_sizes(device_type: str) -> bool:
    """Whether training on ``device_type`` captures its step with dynamic sizes (on a CPU;
    see ``training_capture``)."""
    return device_type == "cpu"
