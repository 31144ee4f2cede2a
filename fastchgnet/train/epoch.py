"""The epoch stage of a run: train one epoch with the one step, log at read steps, checkpoint,
evaluate (every rank runs every evaluation step), and the training options' epoch end."""

from __future__ import annotations

import time

import torch

from fastchgnet.train import collectives, compile_choice
from fastchgnet.train.checkpoint import (
    Progress,
    save_checkpoint,
)
from fastchgnet.train.loading import (
    EpochBatches,
    close_loader,
    make_loader,
)
from fastchgnet.train.loop import evaluate, train_epoch
from fastchgnet.train.metrics import REPORTED, MetricSums, append_csv, format_table
from fastchgnet.train.progress import EpochProgress, log
from fastchgnet.train.state import Run
from fastchgnet.train.step import Window


def train_one_epoch(run: Run) -> bool:
    """One epoch (or its rest after a resume), then validation, the training options (best
    model, early stopping) and a checkpoint. Returns whether the run stops here."""
    config, progress, rank = run.config, run.progress, run.rank
    epoch, sampler = progress.epoch, run.train_sampler
    if run.train_loader is None:  # one loader for the run: its workers persist across epochs
        run.train_batches = EpochBatches(
            sampler, run.splits.train, epoch, progress.step_in_epoch, epochs=config.optim.epochs
        )
        capacity = sampler.capacity if run.compiled else None
        fit = run.step.captured is not None and run.step.captured.dynamic
        workers, device = config.data.loader_workers, run.engine.device
        run.train_loader = make_loader(
            run.splits, run.train_batches, workers, capacity, device, fit=fit
        )
    else:
        run.train_batches.set_epoch(epoch, progress.step_in_epoch)
    log(
        f"epoch {epoch + 1}: {'packed' if run.packed else 'balanced'} sampler, mean per-rank "
        f"cost CV {sampler.load_cv():.4f} over {run.world_size} rank(s)",
        rank,
    )
    settings = config.run
    reporter = EpochProgress(
        epoch, len(sampler), progress.step_in_epoch, settings.progress, settings.log_every, rank
    )
    run.counted = progress.step_in_epoch  # the steps before it are in progress.structures
    run.epoch_started, run.seconds_before = time.perf_counter(), progress.train_seconds
    result = train_epoch(
        run.step,
        run.train_loader,
        progress,
        reporter,
        max_bad_steps=settings.max_bad_steps,
        reads_at=lambda s: s % settings.log_every == 0 or _every(s, settings.checkpoint_every),
        max_steps=settings.max_steps,
        on_step=lambda state: _after_step(run, state),
        on_read=lambda state, window: _log_row(run, state, window),
        profile_steps=tuple(settings.profile_steps) or None,
        sync_check=run.sync_check,
        stop_requested=lambda: run.signals.requested,
    )
    reporter.close()
    progress.train_seconds, run.epoch_started = run.seconds_before + result.seconds, None
    count_structures(run)
    _log_capture(run)
    mid_epoch = progress.step_in_epoch < len(sampler)
    if (result.stopped or result.interrupted) and mid_epoch:
        if run.checkpoint_step != progress.global_step:  # not written by this step already
            checkpoint(run)
        run.signals.raise_if_requested()
        return True
    # every rank is here (a mid-epoch stop returned above on every rank): evaluation's
    # collectives follow, and this one first
    mean_loss = ranks_mean_loss(progress, run.engine.device)
    run.val = run_eval(run, "val")
    results = run.val.results()
    run.history.append({"epoch": epoch + 1, "loss": mean_loss, **results})
    log(
        f"\nepoch {epoch + 1}/{config.optim.epochs}: train loss {mean_loss:.4g}, "
        f"{result.skipped} skipped step(s)\n" + format_table({"val": results}),
        rank,
    )
    if rank == 0:
        append_csv(run.out / "metrics.csv", metric_row(epoch + 1, "val", progress, results))
    run.scalars.add(results, progress.global_step, "val")
    progress.epoch, progress.step_in_epoch, run.counted = epoch + 1, 0, 0
    progress.epoch_loss, progress.epoch_finite, progress.epoch_skipped = 0.0, 0, 0
    stop = run.options.end_epoch(epoch + 1, results, run.model)  # the same on every rank
    checkpoint(run)  # after the options' epoch end: its state holds this epoch's score
    if stop:
        stale = run.options.tracker.stale
        log(f"early stopping: no better validation score for {stale} epochs", rank)
        return True
    return result.stopped


def ranks_mean_loss(progress: Progress, device: torch.device) -> float:
    """The epoch's mean training loss over the finite steps of every rank (each rank's loss
    totals in ``progress``, summed in one all-reduce on ``device``; this rank's own without a
    process group). NaN when no step was finite."""
    totals = torch.tensor(
        [progress.epoch_loss, float(progress.epoch_finite)], dtype=torch.float64, device=device
    )
    loss_sum, finite = collectives.all_reduce(totals).tolist()
    return loss_sum / finite if finite else float("nan")


def _every(step: int, n: int) -> bool:
    return bool(n) and step % n == 0


def _after_step(run: Run, state: Progress) -> None:
    """Checkpoints and the optional replica check (both synchronise; neither is every step).
    At the epoch's last step and at ``max_steps`` the epoch's end writes the checkpoint (one
    folder per step: two writes to the same folder could leave ranks with different
    progress if killed in between)."""
    settings = run.config.run
    run.options.after_step(run.model)  # EMA of the weights, when on
    if _every(state.global_step, settings.check_sync_every):
        if not run.engine.replicas_in_sync():
            raise RuntimeError(f"step {state.global_step}: parameters differ across ranks")
        log(
            f"step {state.global_step}: parameters identical on all {run.world_size} ranks",
            run.rank,
        )
    epoch_end = state.step_in_epoch == len(run.train_sampler)
    stop = bool(settings.max_steps) and state.global_step >= settings.max_steps
    if _every(state.global_step, settings.checkpoint_every) and not (epoch_end or stop):
        checkpoint(run)


def _log_row(run: Run, state: Progress, window: Window) -> None:
    """A train_log.csv row at every read of the device totals (main rank): the window's mean
    loss over every rank's finite steps (``Window.ranks_loss``), its skipped steps (the same
    on every rank: they skip together) and the learning rate its steps used."""
    loss = window.ranks_loss
    if run.rank == 0:
        row = {"global_step": state.global_step, "epoch": state.epoch + 1}
        row |= {"loss": loss, "skipped": window.skipped, "lr": run.engine.step_lr}
        append_csv(run.out / "train_log.csv", row)
    scalars = {"loss": loss, "lr": run.engine.step_lr}  # the rate the steps used
    run.scalars.add(scalars, state.global_step, "train")


def _log_capture(run: Run) -> None:
    """Log the capture's graphs and compile seconds; record a CPU build for later runs'
    compile decisions (``compile_choice.remember_build``)."""
    captured = run.step.captured
    if captured is not None:
        stats = captured.stats
        log(
            f"compile: {stats.graphs} graph(s), {stats.recompiles} recompile(s), "
            f"{stats.compile_seconds:.1f} s tracing and compiling",
            run.rank,
        )
        compile_choice.remember_build(run)


def run_eval(run: Run, name: str) -> MetricSums:
    """Metrics of the split ``name`` on every rank's share, summed over ranks. Every rank
    steps through the same plan (ranks without structures evaluate padding only)."""
    indices = getattr(run.splits, name)
    if not len(indices):
        return MetricSums()
    batches = EpochBatches(run.eval_samplers[name], indices, 0, ahead=False)
    workers, device = run.config.data.loader_workers, run.engine.device
    loader = make_loader(run.splits, batches, workers, device=device)
    try:
        with run.options.evaluation(run.model) as model:  # the EMA weights, when on
            return evaluate(model, loader, run.engine.device)
    finally:
        close_loader(loader)


def metric_row(epoch: int, split: str, progress: Progress, results: dict[str, float]) -> dict:
    row: dict[str, object] = {"epoch": epoch, "split": split, "global_step": progress.global_step}
    for target in REPORTED:
        row[f"{target}_mae"] = results.get(f"{target}_mae", float("nan"))
        row[f"{target}_r2"] = results.get(f"{target}_r2", float("nan"))
    return row


def count_structures(run: Run) -> None:
    """Add the real structures (every rank's) of the epoch's steps done since the last count
    to ``progress.structures`` (summary.json's count, kept in checkpoints)."""
    progress = run.progress
    done = run.train_sampler.plan()[run.counted : progress.step_in_epoch]
    progress.structures += sum(len(part) for step in done for part in step)
    run.counted = max(run.counted, progress.step_in_epoch)


def checkpoint(run: Run) -> None:
    """Every rank writes its file of the checkpoint at the current step; rank 0 commits it.
    Mid-epoch its training seconds count the epoch so far, as its structures do (a run killed
    after it resumed with the structures but not their seconds: its rate read high)."""
    count_structures(run)
    if run.epoch_started is not None:
        elapsed = time.perf_counter() - run.epoch_started
        run.progress.train_seconds = run.seconds_before + elapsed
    save_checkpoint(
        run.out / "checkpoints",
        rank=run.rank,
        world_size=run.world_size,
        progress=run.progress,
        engine_state=run.engine.state_dict(),
        model=run.model if run.rank == 0 else None,
        config=run.config.to_dict(),
        history=run.history,
        barrier=collectives.barrier,
        keep=run.config.run.keep,
        options=run.options.state_dict() if run.rank == 0 else None,
        data_origin=run.data_origin,
    )
    run.checkpoint_step = run.progress.global_step
