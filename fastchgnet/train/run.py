"""``train(config)``: a run as named stages, each a short function below.

    setup      device, process group (with its timeout), seeds, output folder
    data       cache, splits, composition fit, samplers
    engine     model on its engine (torch or DeepSpeed), the one TrainStep, capture
    resume     weights, optimiser, progress and RNG of the newest checkpoint
    epoch      train one epoch (``loop.train_epoch``), log at read steps, checkpoint
    evaluate   validation / test metrics, summed over ranks
    finish     test split, metrics.csv, plots, model.pt and summary.json

Outputs under ``run.out_dir``: config.json, checkpoints/, train_log.csv (a row every
``run.log_every`` steps), metrics.csv (val per epoch, test at the end), parity-val.png /
parity-test.png, model.pt (our model file), summary.json, ranks/ (pid and host of each rank),
tensorboard/ (option).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastchgnet.train import collectives
from fastchgnet.train.checkpoint import (
    Progress,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from fastchgnet.train.config import TrainConfig
from fastchgnet.train.data import (
    EpochBatches,
    Splits,
    composition_fractions,
    make_loader,
    make_sampler,
    make_splits,
    resolve_cache,
)
from fastchgnet.train.engine import launched_distributed, make_engine
from fastchgnet.train.loop import SyncCheck, evaluate, train_epoch
from fastchgnet.train.metrics import REPORTED, MetricSums, append_csv, format_table
from fastchgnet.train.model_setup import build_model, should_fit_composition
from fastchgnet.train.options import TrainingOptions
from fastchgnet.train.plots import learning_curve_plot, parity_plot
from fastchgnet.train.progress import EpochProgress, Scalars, log
from fastchgnet.train.step import TrainStep, Window


@dataclass
class RunSummary:
    """A finished run: last val and test metrics (see metrics.MetricSums.results), steps,
    seconds of training (evaluation excluded), structures trained on per second and in all
    (real structures of all ranks; padding is not counted), and the capture counts (graphs,
    recompiles; 0 when eager)."""

    val: dict[str, float]
    test: dict[str, float]
    global_step: int
    train_seconds: float
    structures_per_second: float
    out_dir: Path
    structures: int = 0
    graphs: int = 0
    recompiles: int = 0


@dataclass
class Run:
    """What the stages share: config, rank, folders, data, engine, step and progress."""

    config: TrainConfig
    rank: int
    world_size: int
    out: Path
    compiled: bool
    packed: bool
    splits: Splits | None = None
    train_sampler: object = None
    eval_samplers: dict = field(default_factory=dict)
    engine: object = None
    step: TrainStep | None = None
    progress: Progress = field(default_factory=Progress)
    history: list = field(default_factory=list)
    val: MetricSums = field(default_factory=MetricSums)
    train_seconds: float = 0.0
    trained: int = 0
    scalars: Scalars | None = None
    options: TrainingOptions | None = None
    train_batches: EpochBatches | None = None
    sync_check: SyncCheck | None = None
    train_loader: object = None

    @property
    def model(self) -> torch.nn.Module:
        return self.engine.module


def train(config: TrainConfig, resume: bool = False) -> RunSummary:
    """Run the training ``config`` describes (resuming its newest checkpoint when asked)."""
    run = setup(config)
    model = prepare_data(run, resume)
    build_engine(run, model)
    if resume:
        resume_from_checkpoint(run)
    stopped = False
    while run.progress.epoch < config.optim.epochs and not stopped:
        stopped = train_one_epoch(run)
    return finish(run, stopped)


def setup(config: TrainConfig) -> Run:
    """Process group (DeepSpeed's launcher: NCCL on GPUs, gloo on CPUs), seeds, out folder."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    compiled = config.run.compiles(device_type)
    packed = config.data.batching == "packed" or (config.data.batching == "auto" and compiled)
    if compiled and not packed:
        raise ValueError(
            "run.compile needs one padded batch shape: set data.batching to 'packed' or 'auto'"
        )
    if config.run.engine == "torch" and launched_distributed():
        raise ValueError(
            "run.engine=torch under a launcher of several ranks would train each rank alone "
            "on one device: use run.engine=auto or deepspeed"
        )
    if config.run.engine == "deepspeed" or (config.run.engine == "auto" and launched_distributed()):
        collectives.init_process_group(config.run.dist_timeout_s)
    rank, world_size = collectives.rank_and_world()
    out = Path(config.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if world_size > 1:
        collectives.register_rank(out, rank)
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    random.seed(config.run.seed)
    np.random.seed(config.run.seed)  # noqa: NPY002 - the legacy generator third parties use
    scalars = Scalars(config.run.tensorboard, out, rank)
    sync_check = SyncCheck(config.run.sync_debug)
    return Run(
        config, rank, world_size, out, compiled, packed, scalars=scalars, sync_check=sync_check
    )


def prepare_data(run: Run, resume: bool) -> torch.nn.Module:
    """The new model, the cache (converted by rank 0), splits, composition fit, samplers."""
    config = run.config
    model = build_model(config.model, config.run.seed)
    model.train()  # loaded models may come in eval mode (no derivative graph for the loss)
    cutoffs = (model.config.atom_cutoff, model.config.bond_cutoff)
    cache = resolve_cache(config.data, run.out, cutoffs, run.rank == 0)
    if run.rank != 0:  # converting may outlast the collectives' timeout: wait on the file
        collectives.wait_for_file(cache / "manifest.json", run.out, run.rank)
    collectives.barrier()
    splits = run.splits = make_splits(cache, config.data)
    if cutoffs != (splits.dataset.atom_cutoff, splits.dataset.bond_cutoff):
        raise ValueError(f"{cache}: built with other cutoffs than the model's {cutoffs}")
    log(
        f"data: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test "
        f"structures from {cache}; {run.world_size} rank(s)",
        run.rank,
    )
    if should_fit_composition(config.model) and not resume:
        compositions, energies = composition_fractions(
            splits.dataset, splits.train, model.config.max_num_elements
        )
        model.composition.fit(compositions, energies)
    world = (run.rank, run.world_size)
    run.train_sampler = make_sampler(
        splits, splits.train, config.data, world, config.run.seed, packed=run.packed
    )
    run.eval_samplers = {
        name: make_sampler(splits, getattr(splits, name), config.data, world, 0)
        for name in ("val", "test")
    }
    return model


def build_engine(run: Run, model: torch.nn.Module) -> None:
    """The engine (owns the optimiser and the schedule), the one TrainStep, capture."""
    config = run.config
    total_steps = config.optim.epochs * len(run.train_sampler)  # the schedule
    run.engine = make_engine(
        model,
        config.optim,
        config.run.engine,
        total_steps,
        config.data.batch_size,
        config.run.deepspeed_config,
    )
    captured = None
    if run.compiled:
        from fastchgnet.compile import CapturedModel

        captured = CapturedModel(
            run.model, loss_config=config.loss, backend=config.run.compile_backend
        )
        log(
            f"compile: training step captured ({config.run.compile_backend}) for one padded "
            f"shape {run.train_sampler.capacity}; the first step compiles",
            run.rank,
        )
    run.step = TrainStep(run.engine, config.loss, captured)
    run.options = TrainingOptions(config, run.model, run.out, run.rank == 0)
    if run.rank == 0:
        (run.out / "config.json").write_text(json.dumps(config.to_dict(), indent=1) + "\n")
    log(
        f"model: {run.model.extra_repr()}; lr {run.engine.lr:.3g}; "
        f"{len(run.train_sampler)} steps/epoch",
        run.rank,
    )


def resume_from_checkpoint(run: Run) -> None:
    """Weights, optimiser shards, progress, history and RNG states of the newest checkpoint."""
    root = run.out / "checkpoints"
    folder = latest_checkpoint(root)
    if folder is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {root}")
    main, payloads = load_checkpoint(folder, run.rank, run.world_size)
    run.model.load_state_dict(main["model"])
    run.engine.load_state_dict(payloads[run.rank]["engine"], [p["engine"] for p in payloads])
    run.progress = Progress(**payloads[run.rank]["progress"])
    run.step = TrainStep(run.engine, run.config.loss, run.step.captured, run.progress.bad_steps)
    run.history = list(main["history"])
    run.options.resume()
    set_rng_state(payloads[run.rank]["rng"])
    log(
        f"resumed from {folder} (epoch {run.progress.epoch + 1}, step {run.progress.global_step})",
        run.rank,
    )


def checkpoint(run: Run) -> None:
    """Every rank writes its file of the checkpoint at the current step; rank 0 commits it."""
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
    )


def train_one_epoch(run: Run) -> bool:
    """One epoch (or its rest after a resume), then validation, the training options (best
    model, early stopping) and a checkpoint. Returns whether the run stops here."""
    config, progress, rank = run.config, run.progress, run.rank
    epoch, sampler = progress.epoch, run.train_sampler
    if run.train_loader is None:  # one loader for the run: its workers persist across epochs
        run.train_batches = EpochBatches(sampler, run.splits.train, epoch, progress.step_in_epoch)
        capacity = sampler.capacity if run.compiled else None
        workers, device = config.data.loader_workers, run.engine.device
        run.train_loader = make_loader(run.splits, run.train_batches, workers, capacity, device)
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
    first_step = progress.step_in_epoch
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
    )
    reporter.close()
    run.train_seconds += result.seconds
    done = sampler.plan()[first_step : first_step + result.steps]
    run.trained += sum(len(part) for step in done for part in step)
    _log_capture(run)
    if result.stopped and progress.step_in_epoch < len(sampler):
        checkpoint(run)
        return True
    run.val = run_eval(run, "val")
    results = run.val.results()
    run.history.append({"epoch": epoch + 1, "loss": result.mean_loss, **results})
    log(
        f"\nepoch {epoch + 1}/{config.optim.epochs}: train loss {result.mean_loss:.4g}, "
        f"{result.skipped} skipped step(s)\n" + format_table({"val": results}),
        rank,
    )
    if rank == 0:
        append_csv(run.out / "metrics.csv", _metric_row(epoch + 1, "val", progress, results))
    run.scalars.add(results, progress.global_step, "val")
    progress.epoch, progress.step_in_epoch = epoch + 1, 0
    checkpoint(run)
    if run.options.end_epoch(epoch + 1, results, run.model):  # the same on every rank
        stale = run.options.tracker.stale
        log(f"early stopping: no better validation score for {stale} epochs", rank)
        return True
    return result.stopped


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
    """A train_log.csv row at every read of the device totals (main rank)."""
    if run.rank == 0:
        row = {"global_step": state.global_step, "epoch": state.epoch + 1}
        row |= {"loss": window.mean_loss, "skipped": window.skipped, "lr": run.engine.lr}
        append_csv(run.out / "train_log.csv", row)
    run.scalars.add({"loss": window.mean_loss, "lr": run.engine.lr}, state.global_step, "train")


def _log_capture(run: Run) -> None:
    captured = run.step.captured
    if captured is not None:
        stats = captured.stats
        log(
            f"compile: {stats.graphs} graph(s), {stats.recompiles} recompile(s), "
            f"{stats.compile_seconds:.1f} s tracing and compiling",
            run.rank,
        )


def run_eval(run: Run, name: str) -> MetricSums:
    """Metrics of the split ``name`` on every rank's share, summed over ranks. Every rank
    steps through the same plan (ranks without structures evaluate padding only)."""
    indices = getattr(run.splits, name)
    if not len(indices):
        return MetricSums()
    batches = EpochBatches(run.eval_samplers[name], indices, 0, ahead=False)
    workers, device = run.config.data.loader_workers, run.engine.device
    loader = make_loader(run.splits, batches, workers, device=device)
    with run.options.evaluation(run.model) as model:  # the EMA weights, when on
        return evaluate(model, loader, run.engine.device)


def _metric_row(epoch: int, split: str, progress: Progress, results: dict[str, float]) -> dict:
    row: dict[str, object] = {"epoch": epoch, "split": split, "global_step": progress.global_step}
    for target in REPORTED:
        row[f"{target}_mae"] = results.get(f"{target}_mae", float("nan"))
        row[f"{target}_r2"] = results.get(f"{target}_r2", float("nan"))
    return row


def finish(run: Run, stopped: bool) -> RunSummary:
    """Test metrics, metrics.csv, plots, model.pt and summary.json (main rank)."""
    config, progress = run.config, run.progress
    test_results: dict[str, float] = {}
    if not stopped or progress.step_in_epoch == 0:  # not cut mid-epoch by run.max_steps
        test = run_eval(run, "test")
        test_results = test.results()
        if run.rank == 0:
            val_results = run.val.results()
            log("\nfinal metrics\n" + format_table({"val": val_results, "test": test_results}))
            row = _metric_row(progress.epoch, "test", progress, test_results)
            append_csv(run.out / "metrics.csv", row)
            if config.run.plots:
                for name, sums in (("val", run.val), ("test", test)):
                    path = parity_plot(sums, run.out / f"parity-{name}.png", f"{name} set")
                    if path is not None:
                        log(f"parity plot: {path}")
                path = learning_curve_plot(run.out, run.out / "learning-curve.png")
                if path is not None:
                    log(f"learning curve: {path}")
    rate = run.trained / run.train_seconds if run.train_seconds > 0 else 0.0
    captured = run.step.captured
    summary = RunSummary(
        run.val.results(),
        test_results,
        progress.global_step,
        run.train_seconds,
        rate,
        run.out,
        structures=run.trained,
        graphs=captured.stats.graphs if captured is not None else 0,
        recompiles=captured.stats.recompiles if captured is not None else 0,
    )
    if run.rank == 0:
        run.options.save_final(run.model, run.out)  # the EMA weights, when on
        log(f"model written to {run.out / 'model.pt'}")
        write_summary(summary, run)
    run.scalars.close()
    return summary


def write_summary(summary: RunSummary, run: Run) -> None:
    """summary.json: throughput, capture counts and peak device memory, for scripts
    (bench/gpu_check.sh) that assert on a run."""
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    data = {
        "structures_per_second": summary.structures_per_second,
        "train_seconds": summary.train_seconds,
        "global_step": summary.global_step,
        "structures": summary.structures,
        "world_size": run.world_size,
        "compiled": run.compiled,
        "graphs": summary.graphs,
        "recompiles": summary.recompiles,
        "cudagraph_skips": _cudagraph_skips(),
        "host_syncs_checked": run.sync_check.checked > 0,
        "steps_checked_for_host_syncs": run.sync_check.checked,
        "peak_memory_bytes": peak,
        "val": summary.val,
        "test": summary.test,
    }
    (run.out / "summary.json").write_text(json.dumps(data, indent=1) + "\n")


def _cudagraph_skips() -> int:
    """Times inductor declined to record a CUDA graph in this process (dynamo's counter)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])
