"""The training and evaluation loops: batches in, ``TrainStep`` updates and metrics out.

``train_epoch`` knows nothing of files or configs beyond what it is handed: the step updates
the model, ``on_step`` (the caller) writes checkpoints, ``on_read`` logs, ``EpochProgress``
reports. The steady state makes no host synchronisation: the step's totals stay on the device
and are read (one transfer) only at the steps ``reads_at`` names (log and checkpoint steps),
at the epoch's end and where ``max_steps`` stops it. The non-finite-loss limit
(``max_bad_steps`` in a row) is checked at those reads, so a run may stop up to ``log_every``
steps later than the step that reached the limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from fastchgnet.data.batch import GraphBatch
from fastchgnet.data.labels import LabelBatch
from fastchgnet.model.potential import eval_mode, frozen
from fastchgnet.numerics import flush_denormals
from fastchgnet.train.checkpoint import Progress
from fastchgnet.train.metrics import MetricSums
from fastchgnet.train.prefetch import DevicePrefetcher
from fastchgnet.train.progress import EpochProgress, log
from fastchgnet.train.step import TrainStep, Window


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row: the run stops."""


@dataclass
class EpochResult:
    """What an epoch's training part did: steps and skipped steps (those before a resume
    included: ``Progress``' totals), seconds of this call, whether ``max_steps`` stopped it,
    whether a stop request (a signal) ended it. Its loss totals are ``Progress``' (the mean
    over every rank's steps: ``epoch.ranks_mean_loss``)."""

    steps: int
    skipped: int
    seconds: float
    stopped: bool
    interrupted: bool = False


class ProfileRange:
    """Opens the CUDA profiler's capture range (cudaProfilerStart) before global step
    ``start`` and closes it after step ``stop`` (``run.profile_steps``), so that
    ``nsys profile --capture-range=cudaProfilerApi`` records exactly those steps."""

    def __init__(self, steps: tuple[int, int] | None) -> None:
        self.steps, self.open = steps, False
        self.cuda = torch.cuda.is_available()

    def before(self, global_step: int) -> None:
        if self.steps and self.cuda and global_step + 1 == self.steps[0]:
            torch.cuda.profiler.start()
            self.open = True

    def after(self, global_step: int) -> None:
        if self.open and global_step >= self.steps[1]:
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
            self.open = False


class SyncCheck:
    """With ``enabled`` on CUDA, every step after the first ``warmup`` this process runs
    (compiling, recording CUDA graphs: a resumed run records again, so the steps are counted
    here, not by the global step) that is not a read step runs under
    ``torch.cuda.set_sync_debug_mode("error")``: a host synchronisation inside it raises.
    ``checked`` counts the steps run so."""

    def __init__(self, enabled: bool, warmup: int = 3) -> None:
        self.enabled = enabled and torch.cuda.is_available()
        self.warmup, self.seen, self.checked = warmup, 0, 0

    def before(self, reads: bool) -> None:
        """Before a step (``reads``: it brings totals to the host, which syncs by design)."""
        self.seen += 1
        if self.enabled and self.seen > self.warmup and not reads:
            torch.cuda.set_sync_debug_mode("error")
            self.checked += 1

    def after(self) -> None:
        if self.enabled:
            torch.cuda.set_sync_debug_mode("default")


@flush_denormals()  # the whole epoch: see fastchgnet.numerics
def train_epoch(
    step: TrainStep,
    batches: Iterable[tuple[GraphBatch, LabelBatch]],
    progress: Progress,
    reporter: EpochProgress,
    *,
    max_bad_steps: int,
    reads_at: Callable[[int], bool],
    max_steps: int = 0,
    on_step: Callable[[Progress], None] | None = None,
    on_read: Callable[[Progress, Window], None] | None = None,
    profile_steps: tuple[int, int] | None = None,
    sync_check: SyncCheck | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> EpochResult:
    """Train over ``batches`` (this rank's share of one epoch), updating ``progress``.

    A step whose loss is non-finite on any rank is skipped by all ranks (weights and
    optimiser state untouched, decided on the device); ``max_bad_steps`` of them in a row
    raise ``NonFiniteLossError`` at the next read. ``on_step(progress)`` runs after every step
    (checkpoints: ``progress.bad_steps`` is current at read steps); ``on_read(progress,
    window)`` after every read (logs). With ``max_steps`` > 0 the epoch stops once
    ``progress.global_step`` reaches it. ``sync_check`` guards the steady-state steps
    against host synchronisations (CUDA). Where ``stop_requested()`` is True after a step,
    that step is read (as a read step: ``progress.bad_steps`` current), ``on_step`` runs and
    the epoch ends there (``EpochResult.interrupted``; one process only: under several ranks
    no stop is requested, as a read is a collective every rank joins at the same step). The
    epoch's loss totals continue ``progress``' (``epoch_loss``, ``epoch_finite``,
    ``epoch_skipped``: this rank's own; a resumed epoch's mean is the whole epoch's) and are
    kept there at every read, for checkpoints; the reporter and ``on_read`` get the window's
    mean over every rank's steps (``Window.ranks_loss``).
    """
    total, finite, skipped = progress.epoch_loss, progress.epoch_finite, progress.epoch_skipped
    stopped, interrupted = False, False
    profile = ProfileRange(profile_steps)
    sync_check = sync_check or SyncCheck(False)
    start = time.perf_counter()
    for graphs, labels in DevicePrefetcher(batches, step.engine.device):
        profile.before(progress.global_step)
        coming = progress.global_step + 1
        stopped = bool(max_steps and coming >= max_steps)
        last = progress.step_in_epoch + 1 == reporter.total or stopped
        reads = reads_at(coming) or last
        sync_check.before(reads)
        try:
            step(graphs, labels)
        finally:
            sync_check.after()
        progress.step_in_epoch += 1
        progress.global_step += 1
        profile.after(progress.global_step)
        interrupted = stop_requested is not None and stop_requested()
        if reads or interrupted:
            window = step.read()
            total += window.mean_loss * window.finite if window.finite else 0.0
            finite, skipped = finite + window.finite, skipped + window.skipped
            progress.epoch_loss, progress.epoch_finite = total, finite
            progress.epoch_skipped, progress.bad_steps = skipped, window.run
            _check_bad_steps(window, progress, max_bad_steps, step.engine.rank)
            reporter.update(window.ranks_loss, step.engine.step_lr)
            if on_read is not None:
                on_read(progress, window)
        else:
            reporter.update(None, None)
        if on_step is not None:
            on_step(progress)
        if stopped or interrupted:
            break
    seconds = time.perf_counter() - start
    return EpochResult(finite + skipped, skipped, seconds, stopped, interrupted)


def _check_bad_steps(window: Window, progress: Progress, limit: int, rank: int) -> None:
    if window.skipped:
        log(
            f"step {progress.global_step}: {window.skipped} step(s) skipped for a non-finite "
            f"loss since the last log (longest run {window.longest_run}, limit {limit})",
            rank,
        )
    if window.longest_run >= limit:
        raise NonFiniteLossError(
            f"{window.longest_run} non-finite losses in a row (run.max_bad_steps={limit}); "
            "lower the learning rate or check the data"
        )


def evaluate(
    model: torch.nn.Module,
    batches: Iterable[tuple[GraphBatch, LabelBatch]],
    device: torch.device | str,
) -> MetricSums:
    """Metrics of ``model`` over ``batches`` (this rank's share), summed over all ranks.

    Every rank runs every step (a rank without structures gets a padding-only batch, which
    adds nothing), sums stay on the device, and one all-reduce at the end combines them.
    The model is in eval mode for the call (no derivative graph kept) with its weights
    ``frozen`` (conservative forces differentiate by positions and strain only, so no weight
    path is recorded), and both are restored; as ``EagerPotential`` predicts.
    """
    metrics = MetricSums.on(torch.device(device))
    parameters = list(model.parameters())
    with eval_mode(model), frozen(parameters), torch.no_grad(), flush_denormals():
        for graphs, labels in DevicePrefetcher(batches, device):
            metrics.add(model(graphs), labels)
    metrics.all_reduce()
    return metrics
