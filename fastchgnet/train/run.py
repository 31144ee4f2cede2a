"""``train(config)``: compose data, model, engine, loop, checkpoints and metrics into one run.

Outputs under ``run.out_dir``: config.json, checkpoints/, metrics.csv (val per epoch, test at
the end), parity-val.png / parity-test.png, model.pt (our model file), tensorboard/ (option).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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
    composition_fractions,
    make_loader,
    make_sampler,
    make_splits,
    resolve_cache,
)
from fastchgnet.train.engine import init_distributed, launched_distributed, make_engine
from fastchgnet.train.loop import evaluate, train_epoch
from fastchgnet.train.metrics import REPORTED, MetricSums, append_csv, format_table
from fastchgnet.train.model_setup import build_model, should_fit_composition
from fastchgnet.train.plots import learning_curve_plot, parity_plot
from fastchgnet.train.progress import EpochProgress, Scalars, log


@dataclass
class RunSummary:
    """A finished run: last val and test metrics (see metrics.MetricSums.results), steps,
    seconds of training (evaluation excluded), structures trained on per second (all ranks)."""

    val: dict[str, float]
    test: dict[str, float]
    global_step: int
    train_seconds: float
    structures_per_second: float
    out_dir: Path


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _metric_row(epoch: int, split: str, step: int, results: dict[str, float]) -> dict:
    row: dict[str, object] = {"epoch": epoch, "split": split, "global_step": step}
    for target in REPORTED:
        row[f"{target}_mae"] = results.get(f"{target}_mae", float("nan"))
        row[f"{target}_r2"] = results.get(f"{target}_r2", float("nan"))
    return row


def train(config: TrainConfig, resume: bool = False) -> RunSummary:
    """Run the training ``config`` describes (resuming its newest checkpoint when asked)."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    compiled = config.run.compiles(device_type)
    packed = config.data.batching == "packed" or (config.data.batching == "auto" and compiled)
    if compiled and not packed:
        raise ValueError(
            "run.compile needs one padded batch shape: set data.batching to 'packed' or 'auto'"
        )
    if config.run.engine == "deepspeed" or (config.run.engine == "auto" and launched_distributed()):
        init_distributed()
    rank, world_size = _world()
    out = Path(config.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    random.seed(config.run.seed)
    np.random.seed(config.run.seed)  # noqa: NPY002 - the legacy generator third parties use

    model = build_model(config.model, config.run.seed)
    model.train()  # loaded models may come in eval mode (no derivative graph for the loss)
    cutoffs = (model.config.atom_cutoff, model.config.bond_cutoff)
    cache = resolve_cache(config.data, out, cutoffs, rank == 0)
    _barrier()
    splits = make_splits(cache, config.data)
    if cutoffs != (splits.dataset.atom_cutoff, splits.dataset.bond_cutoff):
        raise ValueError(f"{cache}: built with other cutoffs than the model's {cutoffs}")
    log(
        f"data: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test "
        f"structures from {cache}; {world_size} rank(s)",
        rank,
    )
    if should_fit_composition(config.model) and not resume:
        compositions, energies = composition_fractions(
            splits.dataset, splits.train, model.config.max_num_elements
        )
        model.composition.fit(compositions, energies)

    train_sampler = make_sampler(
        splits, splits.train, config.data, (rank, world_size), config.run.seed, packed=packed
    )
    capacity = getattr(train_sampler, "capacity", None) if compiled else None
    steps_per_epoch = len(train_sampler)
    total_steps = config.optim.epochs * steps_per_epoch  # the schedule; max_steps only stops
    engine = make_engine(
        model,
        config.optim,
        config.run.engine,
        total_steps,
        config.data.batch_size,
        config.run.deepspeed_config,
    )
    model = engine.module
    progress, history = Progress(), []
    root = out / "checkpoints"
    if resume:
        folder = latest_checkpoint(root)
        if folder is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {root}")
        main, payloads = load_checkpoint(folder, rank, world_size)
        model.load_state_dict(main["model"])
        engine.load_state_dict(payloads[rank]["engine"], [p["engine"] for p in payloads])
        progress = Progress(**payloads[rank]["progress"])
        history = list(main["history"])
        set_rng_state(payloads[rank]["rng"])
        log(
            f"resumed from {folder} (epoch {progress.epoch + 1}, step {progress.global_step})", rank
        )
    if rank == 0:
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1) + "\n")
    log(f"model: {model.extra_repr()}; lr {engine.lr:.3g}; {steps_per_epoch} steps/epoch", rank)
    captured = None
    if compiled:
        from fastchgnet.compile import CapturedModel

        captured = CapturedModel(model, loss_config=config.loss, backend=config.run.compile_backend)
        log(
            f"compile: training step captured ({config.run.compile_backend}) for one padded "
            f"shape {capacity}; the first step compiles",
            rank,
        )

    def checkpoint(state: Progress) -> None:
        save_checkpoint(
            root,
            rank=rank,
            world_size=world_size,
            progress=state,
            engine_state=engine.state_dict(),
            model=model if rank == 0 else None,
            config=config.to_dict(),
            history=history,
            barrier=_barrier,
            keep=config.run.keep,
        )

    def after_step(state: Progress, loss: float) -> None:
        if rank == 0:
            row = {"global_step": state.global_step, "epoch": state.epoch + 1, "loss": loss}
            append_csv(out / "train_log.csv", {**row, "lr": engine.lr})
        sync = config.run.check_sync_every
        if sync and state.global_step % sync == 0:
            if not engine.replicas_in_sync():
                raise RuntimeError(f"step {state.global_step}: parameters differ across ranks")
            log(f"step {state.global_step}: parameters identical on all {world_size} ranks", rank)
        n = config.run.checkpoint_every
        if n and state.global_step % n == 0:
            checkpoint(state)

    scalars = Scalars(config.run.tensorboard, out, rank)
    eval_sampler = {
        name: make_sampler(splits, getattr(splits, name), config.data, (rank, world_size), 0)
        for name in ("val", "test")
    }

    def run_eval(name: str) -> MetricSums:
        indices = getattr(splits, name)
        batches = make_loader(splits, EpochBatches(eval_sampler[name], indices, 0), 0)
        return evaluate(model, batches, engine.device)

    val, train_seconds, trained = MetricSums(), 0.0, 0
    stopped = False
    while progress.epoch < config.optim.epochs and not stopped:
        epoch = progress.epoch
        batches = EpochBatches(train_sampler, splits.train, epoch, progress.step_in_epoch)
        loader = make_loader(splits, batches, config.data.loader_workers, capacity)
        log(
            f"epoch {epoch + 1}: {'packed' if packed else 'balanced'} sampler, mean per-rank "
            "cost CV "
            f"{train_sampler.load_cv():.4f} over {world_size} rank(s)",
            rank,
        )
        reporter = EpochProgress(
            epoch,
            steps_per_epoch,
            progress.step_in_epoch,
            config.run.progress,
            config.run.log_every,
            rank,
        )
        start = time.perf_counter()
        result = train_epoch(
            engine,
            loader,
            config.loss,
            progress,
            reporter,
            max_bad_steps=config.run.max_bad_steps,
            max_steps=config.run.max_steps,
            on_step=after_step,
            captured=captured,
        )
        train_seconds += time.perf_counter() - start
        if captured is not None:
            stats = captured.stats
            log(
                f"compile: {stats.graphs} graph(s), {stats.recompiles} recompile(s), "
                f"{stats.compile_seconds:.1f} s tracing and compiling",
                rank,
            )
        trained += result.structures * world_size
        reporter.close()
        scalars.add({"loss": result.mean_loss, "lr": engine.lr}, progress.global_step, "train")
        if result.stopped:
            stopped = True
            if progress.step_in_epoch < steps_per_epoch:
                checkpoint(progress)
                break
        val = run_eval("val") if len(splits.val) else MetricSums()
        results = val.results()
        history.append({"epoch": epoch + 1, "loss": result.mean_loss, **results})
        log(
            f"\nepoch {epoch + 1}/{config.optim.epochs}: train loss {result.mean_loss:.4g}, "
            f"{result.skipped} skipped step(s)\n" + format_table({"val": results}),
            rank,
        )
        if rank == 0:
            append_csv(
                out / "metrics.csv", _metric_row(epoch + 1, "val", progress.global_step, results)
            )
        scalars.add(results, progress.global_step, "val")
        progress.epoch, progress.step_in_epoch = epoch + 1, 0
        checkpoint(progress)

    test_results: dict[str, float] = {}
    if not stopped or progress.epoch >= config.optim.epochs:
        test = run_eval("test") if len(splits.test) else MetricSums()
        test_results = test.results()
        if rank == 0:
            val_results = val.results()
            log("\nfinal metrics\n" + format_table({"val": val_results, "test": test_results}))
            append_csv(
                out / "metrics.csv",
                _metric_row(progress.epoch, "test", progress.global_step, test_results),
            )
            if config.run.plots:
                for name, sums in (("val", val), ("test", test)):
                    path = parity_plot(sums, out / f"parity-{name}.png", f"{name} set")
                    if path is not None:
                        log(f"parity plot: {path}")
                path = learning_curve_plot(out, out / "learning-curve.png")
                if path is not None:
                    log(f"learning curve: {path}")
    if rank == 0:
        model.save(out / "model.pt")
        log(f"model written to {out / 'model.pt'}")
    scalars.close()
    rate = trained / train_seconds if train_seconds > 0 else 0.0
    return RunSummary(val.results(), test_results, progress.global_step, train_seconds, rate, out)
