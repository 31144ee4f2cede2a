"""``train(config)``: a run as named stages, each a short function below.

    setup      device, process group (with its timeout), seeds, output folder
    data       cache, splits, composition fit, samplers
    engine     model on its engine (torch or DeepSpeed), the one TrainStep, capture
    resume     weights, optimiser, progress and RNG of the newest checkpoint
    epoch      train one epoch (``loop.train_epoch``), log at read steps, checkpoint
    evaluate   validation / test metrics, summed over ranks
    finish     test split, metrics.csv, plots, model.pt and summary.json

Outputs under ``run.out_dir``: config.json, checkpoints/, train_log.csv (a row every
``run.log_every`` steps: the mean loss over every rank's steps since the row before),
metrics.csv (val per epoch, test at the end), parity-val.png / parity-test.png, model.pt (our
model file), summary.json, ranks/ (pid and host of each rank), tensorboard/ (option).
"""

from __future__ import annotations

import contextlib
import json
import random
import uuid
from pathlib import Path

import numpy as np
import torch

from fastchgnet.data.cache import GraphDataset
from fastchgnet.data.origin import cache_origin
from fastchgnet.model.loss import TARGETS
from fastchgnet.signals import StopSignals
from fastchgnet.train import collectives, compile_choice, failures
from fastchgnet.train.cache_sources import resolve_cache
from fastchgnet.train.checkpoint import (
    CheckpointError,
    Progress,
    latest_step,
    load_latest,
    older_checkpoints,
    set_rng_state,
)
from fastchgnet.train.config import TrainConfig
from fastchgnet.train.engine import check_deepspeed_config, make_engine, uses_deepspeed
from fastchgnet.train.epoch import train_one_epoch
from fastchgnet.train.finish import finish
from fastchgnet.train.interrupt import Interrupted
from fastchgnet.train.launchers import launched_distributed
from fastchgnet.train.loading import (
    check_energy_labels,
    close_loader,
    composition_fractions,
    make_sampler,
    make_splits,
)
from fastchgnet.train.loop import SyncCheck
from fastchgnet.train.model_setup import build_model, should_fit_composition
from fastchgnet.train.options import TrainingOptions
from fastchgnet.train.outputs import discard_previous, trim_logs
from fastchgnet.train.progress import Scalars, log
from fastchgnet.train.state import Run, RunSummary
from fastchgnet.train.step import TrainStep, training_capture


def train(config: TrainConfig, resume: bool = False) -> RunSummary:
    """Run the training ``config`` describes (resuming its newest checkpoint when asked).

    In one process SIGINT and SIGTERM stop it with a checkpoint at the step it reached and
    raise ``interrupt.Interrupted`` (a KeyboardInterrupt) saying where it stopped; under a
    launcher of several ranks they are not handled here (see ``fastchgnet.train.interrupt``).
    """
    signals, run, training = StopSignals(Interrupted), None, False
    with contextlib.ExitStack() as handling:
        try:
            run = setup(config)
            # one process only, judged from the process group (an MPI launcher's ranks know
            # they are several only there)
            handling.enter_context(signals.installed(enabled=run.world_size == 1))
            run.signals = signals
            model = prepare_data(run, resume)
            build_engine(run, model)
            if resume:
                resume_from_checkpoint(run)
            if run.rank == 0:  # checks passed: an overwritten run's outputs go (start_over)
                discard_previous(run.out)
            training, limit = True, config.run.max_steps
            stopped = bool(limit) and run.progress.global_step >= limit  # resumed at the limit
            while run.progress.epoch < config.optim.epochs and not stopped:
                with signals.deferred():
                    stopped = train_one_epoch(run)
                signals.raise_if_requested()
            return finish(run, stopped)
        except (Interrupted, RuntimeError) as error:
            killed = "killed by signal" in str(error)  # torch's words for a dead loader worker
            if isinstance(error, RuntimeError) and not (signals.requested and killed):
                raise
            # a loader worker killed after a stop request (SIGKILL, or a start method whose
            # workers missed signals.quiet_child): the newest checkpoint is where to
            # continue; any other RuntimeError is raised as it is
            stop = error if isinstance(error, Interrupted) else Interrupted(signals.signum)
            stop.at(run.progress if training else None)
            stop.checkpoint = latest_step(Path(config.run.out_dir) / "checkpoints")
            if stop is error:
                raise
            raise stop from error
        finally:  # its workers end with the run, not at Python's exit (``close_loader``)
            if run is not None:
                close_loader(run.train_loader)


def device_type() -> str:
    """ "cuda" where training runs on GPUs, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def setup(config: TrainConfig) -> Run:
    """Process group (DeepSpeed's launcher: NCCL on GPUs, gloo on CPUs), seeds, out folder.
    ``run.compile="auto"`` on a CPU starts eager; ``prepare_data`` decides it."""
    compiled = config.run.compiles(device_type())
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
    if uses_deepspeed(config.run.engine):
        check_deepspeed_config(config.run.deepspeed_config, config.run.sync_debug)
        collectives.init_process_group(config.run.dist_timeout_s)
    rank, world_size = collectives.rank_and_world()
    out = Path(config.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    token = ""  # this launch's, the same on every rank: names its files under ranks/
    if world_size > 1:
        collectives.register_rank(out, rank)
        token = str(collectives.all_gather_objects(uuid.uuid4().hex)[0])
        failures.begin(out, rank, world_size, token)  # from here a failure is said once
    else:
        failures.end()
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    random.seed(config.run.seed)
    np.random.seed(config.run.seed)  # noqa: NPY002 - the legacy generator third parties use
    scalars = Scalars(config.run.tensorboard, out, rank)
    sync_check = SyncCheck(config.run.sync_debug)
    return Run(
        config,
        rank,
        world_size,
        out,
        compiled,
        packed,
        scalars=scalars,
        sync_check=sync_check,
        token=token,
    )


def prepare_data(run: Run, resume: bool) -> torch.nn.Module:
    """The new model, the cache (converted by rank 0), splits, composition fit, samplers."""
    config = run.config
    model = build_model(config.model, config.run.seed)
    model.train()  # loaded models may come in eval mode (no derivative graph for the loss)
    model.set_precision(config.run.precision, device_type())  # judged for where it will run
    cutoffs = (model.config.atom_cutoff, model.config.bond_cutoff)
    beating = run.rank == 0 and run.world_size > 1
    # rank 0 converts (or rebuilds, or refuses) the cache alone, for longer than any
    # collective's timeout: the others wait on a file saying how it went (collectives.settle)
    token = f"data-{run.token}" if run.token else ""
    problem = None
    try:
        with collectives.heartbeat(run.out) if beating else contextlib.nullcontext():
            cache = resolve_cache(config.data, run.out, cutoffs, run.rank == 0, resume)
    except Exception as error:
        problem = str(error) or type(error).__name__
        raise
    finally:
        if token:
            collectives.settle(run.out, run.rank, config.run.dist_timeout_s, token, problem)
    collectives.barrier()
    if token and run.rank == 0:  # every rank has read it
        (run.out / "ranks" / f"{token}.json").unlink(missing_ok=True)
    run.data_origin = cache_origin(cache)  # kept in each checkpoint, checked on a resume
    splits = run.splits = make_splits(cache, config.data)
    if cutoffs != (splits.dataset.atom_cutoff, splits.dataset.bond_cutoff):
        raise ValueError(f"{cache}: built with other cutoffs than the model's {cutoffs}")
    replayed = f" ({splits.replayed} of them replayed)" if config.data.replay_source else ""
    log(
        f"data: {len(splits.train)} train{replayed} / {len(splits.val)} val / "
        f"{len(splits.test)} test structures from {cache}; {run.world_size} rank(s)",
        run.rank,
    )
    check_empty_splits(config, len(splits.val), len(splits.test), run.rank)
    check_select_metric(config, splits.dataset.label_mask[splits.val])
    if len(splits.train) == 0:  # every frame skipped, or too few for a training split
        raise ValueError(no_training_structure(cache, splits.dataset, config))
    fit = should_fit_composition(config.model) and not resume
    if run.rank == 0 or fit:  # every rank raises together; one prints a warning
        check_energy_labels(splits.dataset, splits.train, cache, required=fit)
    if fit:
        compositions, energies = composition_fractions(
            splits.dataset, splits.train, model.config.max_num_elements
        )
        model.composition.fit(compositions, energies)
    if compile_choice.auto_applies(config, device_type()):
        decision = compile_choice.choose(
            config, model, splits, run.out, run.rank, run.world_size, resume
        )
        log(decision.reason, run.rank)
        run.compiled = run.packed = decision.compile
    world = (run.rank, run.world_size)
    run.train_sampler = make_sampler(
        splits, splits.train, config.data, world, config.run.seed, packed=run.packed
    )
    run.eval_samplers = {
        name: make_sampler(splits, getattr(splits, name), config.data, world, 0)
        for name in ("val", "test")
    }
    return model


def no_training_structure(cache: Path, dataset: GraphDataset, config: TrainConfig) -> str:
    """Why the training split of ``cache`` is empty, in one line: a split by material of a
    cache with one or two material ids (all frames go to one split; the cure is
    ``data.split_by=frame_tail``), and skipped.json only where it lists frames."""
    line = f"{cache}: no structure for training ({len(dataset)} in the cache"
    materials = np.unique(dataset.material_ids)
    by_material = config.data.split_by == "material" and not config.data.explicit
    if len(dataset) and by_material and config.data.split[0] > 0:  # too few materials
        shown = ", ".join(repr(str(m)) for m in materials[:2]) + (", ..." * (len(materials) > 2))
        line += (
            f", of {len(materials)} material id(s): {shown}; data.split_by=material puts each "
            "material's frames in one split: set data.split_by=frame_tail, or give "
            "data.val_source"
        )
    skipped = cache / "skipped.json"
    if skipped.is_file() and json.loads(skipped.read_text()):
        line += f"; the skipped frames and why: {skipped}"
    return line + ")"


def check_select_metric(config: TrainConfig, val_labels: np.ndarray) -> None:
    """``optim.select_metric`` of a target that no validation structure has a label for is a
    ValueError (one line): no epoch would get a score, and early stopping would end the run
    after its patience. ``val_labels``: the validation split's (n, 4) label mask."""
    metric, target = config.optim.select_metric, config.optim.select_metric.removesuffix("_mae")
    if target not in TARGETS or not len(val_labels) or val_labels[:, TARGETS.index(target)].any():
        return
    raise ValueError(
        f"config optim.select_metric={metric}: none of the {len(val_labels)} validation "
        f"structures has a {target} label; choose loss or a target "
        "the validation data has"
    )


def check_empty_splits(config: TrainConfig, n_val: int, n_test: int, rank: int = 0) -> None:
    """Early stopping without validation structures is a ValueError (one line): it would stop
    after the first epoch for want of a score. An empty validation split otherwise, or an
    empty test split, is a printed warning of what the run will not give."""
    where = (
        "data.val_source/test_source"
        if config.data.explicit
        else f"data.split={list(config.data.split)}"
    )
    if not n_val and config.optim.early_stopping_patience > 0:
        raise ValueError(
            f"config optim.early_stopping_patience={config.optim.early_stopping_patience} needs "
            f"validation structures and {where} leaves none: give the validation split a share "
            "or set optim.early_stopping_patience=0"
        )
    if not n_val:
        log(
            f"warning: no validation structures ({where}): no validation per epoch and no "
            "best_model.pt (optim.select_metric unused); model.pt is the last epoch's",
            rank,
        )
    if not n_test:
        log(f"warning: no test structures ({where}): no test metrics at the end", rank)


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
        captured = training_capture(run.model, config.loss, config.run.compile_backend)
        sizes = "sizes within" if captured.dynamic else "one padded shape"
        log(
            f"compile: training step captured ({config.run.compile_backend}) for {sizes} "
            f"{run.train_sampler.capacity}; the first step compiles",
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
    """Weights, optimiser shards, progress, history and RNG states of the newest checkpoint
    every rank can read: where the newest is damaged (a truncated or missing file, a torn
    ``latest.json``), the one before it, said in one line, and so on."""
    root = run.out / "checkpoints"
    fallbacks = [None, *older_checkpoints(root)]  # None: the one latest.json names
    for attempt, folder in enumerate(fallbacks):
        loaded, name, problem, damaged = None, None, "", False
        try:
            loaded = load_latest(root, run.rank, run.world_size, run.engine.needs_every_shard,
                                 folder=folder)  # fmt: skip
            if loaded is None:
                raise FileNotFoundError(f"--resume: no checkpoint under {root}")
            name = loaded[0].name
        except Exception as error:  # whatever stops one rank must stop them all
            last = attempt + 1 == len(fallbacks)
            damaged = isinstance(error, CheckpointError)
            if run.world_size == 1 and (last or not damaged):
                raise
            problem = f"rank {run.rank}: {error}" if run.world_size > 1 else str(error)
        # each rank reads latest.json, rank 0's file and its own: all learn whether any failed
        # or saw another checkpoint (a stale view of a shared folder), and stop (or fall back)
        # together, instead of the others waiting for it in their first collective
        seen = collectives.all_gather_objects((name, problem, damaged))
        problems = [p for _, p, _ in seen if p]
        if not problems and len({n for n, _, _ in seen}) > 1:
            problems = [f"the ranks see different checkpoints: {[n for n, _, _ in seen]}"]
        if not problems and loaded is not None:
            break
        if attempt + 1 < len(fallbacks) and all(d for _, p, d in seen if p):
            older = getattr(fallbacks[attempt + 1], "name", "")
            log(f"--resume: {problems[0]}; resuming from the checkpoint before it, {older}",
                run.rank)  # fmt: skip
            continue
        raise CheckpointError(problems[0] if problems else problem)
    folder, main, payloads = loaded
    run.model.load_state_dict(main["model"])
    engines = [p["engine"] if p is not None else None for p in payloads]
    run.engine.load_state_dict(payloads[run.rank]["engine"], engines)
    run.progress = Progress(**payloads[run.rank]["progress"])
    run.step = TrainStep(run.engine, run.config.loss, run.step.captured, run.progress.bad_steps)
    run.history = list(main["history"])
    run.options.resume(main.get("options"), run.model)
    if run.rank == 0:  # the rows a resume writes again (train_log past it, metrics.csv)
        trim_logs(run.out, run.progress.global_step)
    set_rng_state(payloads[run.rank]["rng"])
    log(
        f"resumed from {folder} (epoch {run.progress.epoch + 1}, step {run.progress.global_step})",
        run.rank,
    )
