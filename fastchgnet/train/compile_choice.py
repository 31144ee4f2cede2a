"""Compile the training step or not, when ``run.compile = "auto"`` trains on a CPU.

On a GPU "auto" always compiles. On a CPU the C++ build of a training graph costs a minute or
more, so it pays only for long runs. Once the data is split (the run's length is known) and
before the sampler is made (compiling needs packed batches of one shape), rank 0 times the
eager training step (forward, loss, backward) on the first ``batch_size`` training structures
and weighs (``fastchgnet.compile.decide``):

    COLD_TRAIN_SECONDS * MARGIN  <  steps * eager step * (1 - compiled fraction)

The build is cold (``COLD_TRAIN_SECONDS``, or the median of this machine's earlier cold builds
of the same model configuration) unless this machine built the same training graph before: same
code, model and loss configuration, precision, capacity, thread count and CPU. Each inductor
build of a run is recorded (``remember_build``) under the compiled store's folder,
``train-builds/`` (``fastchgnet.compile.store.default_root``), and inductor keeps the graph in
its cache beside it, so a repeated run (another learning rate, seed or number of epochs on the
same data) loads it in seconds: it expects ``WARM_TRAIN_SECONDS`` and no ``MARGIN``, and so
compiles runs several times shorter.

Eager trains on unpadded batches; the captured step runs every batch of the packed plan
padded within its one capacity (on a CPU to the batch's own sizes in all but structures and
short bonds, ``train.step.training_capture``). The compiled fraction is therefore
``train_work_fraction`` (a captured step's cost per padded entry over eager's per real entry)
times the padded entries per real one of this run's packed plan (``packed_padding``: epoch 0's
plan of the training split), at most 1.

Every rank takes rank 0's answer (one ``all_gather_objects``: every rank reaches it). The
decision and its one-line reason are logged and written to ``<out_dir>/compile_decision.json``;
a resumed run reads it back instead of deciding again, so its batches stay the ones it started
with (a run that has checkpoints but no such file started eager, and stays eager).
``data.batching`` other than "auto" keeps the run eager, as it fixes the batching.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fastchgnet.compile.decide import CompileDecision, decide, for_cpu
from fastchgnet.compile.store import (
    code_fingerprint,
    default_root,
    json_digest,
    use_persistent_inductor_cache,
)
from fastchgnet.data.capacity import Capacity, padding_waste
from fastchgnet.data.packing import plan_packed_batches
from fastchgnet.files import write_json_atomic
from fastchgnet.model.loss import LossConfig, training_loss
from fastchgnet.numerics import flush_denormals
from fastchgnet.train import collectives
from fastchgnet.train.checkpoint import latest_checkpoint
from fastchgnet.train.config import TrainConfig
from fastchgnet.train.loading import Splits, collate_items, packing_inputs
from fastchgnet.train.step import dynamic_sizes

if TYPE_CHECKING:
    from fastchgnet.train.state import Run

log = logging.getLogger("fastchgnet.compile")

#: A captured CPU training step's cost per padded entry (atoms + bonds + angles) over the
#: eager step's per real entry, eager on the unpadded batch, by the CPU's vector instructions
#: (torch's ``get_cpu_capability``; AVX2's for any other CPU): ``bench/bench_train_step.py
#: --reference-flush-denormals --packed --batches 12 --threads 2`` (batch 16 at 41.9 % padding,
#: batch 32 at 20 %). AVX2 (an AMD EPYC, stop 26): conservative 0.68 and 0.77, direct 0.82 and
#: 0.93. AVX-512 (a Sapphire Rapids Xeon, stop 32, 2 and 1 threads): conservative 0.45, 0.48,
#: 0.44 and 0.46, direct 0.62, 0.72, 0.62 and 0.73. Stop 34 (the same Xeon, the step captured
#: with dynamic sizes, 1.0 % padding, 2 threads, batch 16 and 32): conservative 0.50 and 0.48,
#: direct 0.70 and 0.72. (Until stop 27 the decision took 0.5 and 0.75 of eager regardless of
#: padding, from runs where eager carried the same padding as the captured step.)
#: An AMD EPYC with AVX-512 (``cpu_kind`` "AVX512-AMD", stop 52, 1.0 % / 0.9 % padding, batch
#: 16 and 32): conservative 0.68 and 0.71 at 2 threads, 0.70 and 0.71 at 1; direct 0.79 and
#: 0.84 at 2 threads, 0.80 and 0.82 at 1.
TRAIN_WORK_FRACTION = {
    "AVX2": {"conservative": 0.75, "direct": 0.9},
    "AVX512": {"conservative": 0.5, "direct": 0.75},
    "AVX512-AMD": {"conservative": 0.7, "direct": 0.82},
}


def train_work_fraction(mode: str, capability: str | None = None) -> float:
    """``TRAIN_WORK_FRACTION`` of force ``mode`` on a CPU of ``capability`` (``for_cpu``)."""
    return for_cpu(TRAIN_WORK_FRACTION, capability)[mode]


#: Cold build of a training graph at batch 16, reference architecture, 2 quiet cores
#: (``bench/bench_compile.py``: 88.9 s conservative in stop 23's quietest run; 133-135 s in
#: stop 28; 86.0 s in stop 29 with its kernels built in groups, ``compile.kernel_groups``); a
#: direct graph builds in about 0.6 of that. Since stop 34 a CPU training graph has dynamic
#: sizes (``train.step.training_capture``), which build slower: 108.4-110.8 s conservative
#: (bench_compile, three cold runs), direct about 0.46 of it (35.8 s against 78.4 s in one
#: ``bench/bench_train_step.py`` process). Stop 35 builds the forward's kernels and the
#: prefix header while the backward is generated: 81.4 s in an hour where the stop-34 code
#: took 90.8-91.7 s, so about 0.9 of those figures. Smaller models build faster, loaded
#: machines 2-5x slower.
COLD_TRAIN_SECONDS = {"conservative": 100.0, "direct": 45.0}
#: Compile only when the expected saving is this many times the expected build: a wrong "on"
#: costs minutes on a loaded machine, a wrong "off" only the saving.
MARGIN = 2.0
#: A build this machine made before, loaded from inductor's cache in a new process: 6.2 s for
#: the conservative graph at batch 16 (``bench/bench_compile.py``, stop 32); issue #15's bound.
WARM_TRAIN_SECONDS = 10.0
DECISION_FILE = "compile_decision.json"
#: Folder of build records under the compiled store's root
BUILDS = "train-builds"
#: Inductor's FX graph cache, a folder in its cache folder (gone when the cache was cleared)
INDUCTOR_GRAPHS = "fxgraph"


def auto_applies(config: TrainConfig, device_type: str) -> bool:
    """Whether this run's compile is decided by timing (``run.compile="auto"`` on a CPU with
    ``data.batching="auto"``)."""
    return (
        config.run.compile == "auto"
        and not device_type.startswith("cuda")
        and config.data.batching == "auto"
    )


def time_eager_step(
    model: torch.nn.Module, splits: Splits, batch_size: int, loss: LossConfig, repeats: int = 2
) -> float:
    """Seconds of one eager forward + loss + backward on the first ``batch_size`` training
    structures (the fastest of ``repeats``); the gradients are cleared after, the weights and
    every random state are left as they were."""
    items = [splits.dataset[int(i)] for i in splits.train[:batch_size]]
    batch, labels = collate_items(items)
    times = []
    with flush_denormals():
        for _ in range(repeats):
            start = time.perf_counter()
            training_loss(model(batch), labels, loss).backward()
            times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return min(times)


def training_steps(config: TrainConfig, n_train: int, world_size: int) -> int:
    """Optimiser steps the run will take (epochs of balanced batches, capped by max_steps)."""
    per_epoch = math.ceil(n_train / (config.data.batch_size * world_size))
    steps = config.optim.epochs * per_epoch
    return min(steps, config.run.max_steps) if config.run.max_steps > 0 else steps


def packed_padding(
    splits: Splits,
    config: TrainConfig,
    world_size: int,
    packing: tuple[np.ndarray, Capacity] | None = None,
) -> float:
    """Padded entries (atoms + bonds + angles) per real one over epoch 0's packed plan of the
    training split, as a compiled CPU run would pack and pad it (1.25: a quarter more work
    than the real graphs; 1.0 for an empty split). ``packing``: ``packing_inputs`` of the
    training split, when the caller has it."""
    sizes, capacity = packing or packing_inputs(splits, splits.train, config.data.batch_size)
    plan = plan_packed_batches(sizes, world_size, capacity, seed=config.run.seed)
    return 1.0 + padding_waste(plan, sizes, capacity, fit=dynamic_sizes("cpu"))["waste"]


def choose(
    config: TrainConfig,
    model: torch.nn.Module,
    splits: Splits,
    out: Path,
    rank: int,
    world_size: int,
    resume: bool,
) -> CompileDecision:
    """The compile decision of this run (see the module docstring); the same on every rank."""
    decision = None
    if rank == 0:
        decision = _read(out) if resume else None
        if resume and decision is None and latest_checkpoint(out / "checkpoints") is not None:
            # a run from before the decision was kept: it started eager, as "auto" was on CPUs
            decision = CompileDecision(
                False, "compile off: a resumed CPU run with no recorded decision started eager",
                0.0, 0.0, 0.0,
            )  # fmt: skip
        if decision is None:
            mode = model.config.forces
            eager = time_eager_step(model, splits, config.data.batch_size, config.loss)
            steps = training_steps(config, len(splits.train), world_size)
            packing = packing_inputs(splits, splits.train, config.data.batch_size)
            padding = packed_padding(splits, config, world_size, packing)
            seconds, warm = expected_build(model, config, packing[1])
            built = "built here before" if warm else "cold build"
            decision = decide(
                steps,
                eager,
                seconds,
                fraction=min(1.0, train_work_fraction(mode) * padding),
                what=f"{mode} training on a CPU (packed batches: {padding - 1:.0%} padding; "
                f"{built})",
                margin=1.0 if warm else MARGIN,
            )
            write_json_atomic(out / DECISION_FILE, decision.__dict__)
    decision = collectives.all_gather_objects(decision)[0]
    assert isinstance(decision, CompileDecision)
    return decision


def _read(out: Path) -> CompileDecision | None:
    """The decision a run in ``out`` made at its start, or None."""
    path = out / DECISION_FILE
    if not path.is_file():
        return None
    try:
        return CompileDecision(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{path}: unreadable compile decision ({exc}); delete it to decide again"
        ) from None


def build_key(model: torch.nn.Module, config: TrainConfig, capacity: Capacity) -> str:
    """What a captured training graph is built for, as a hex digest: the code, the model's and
    the loss's configuration, the frozen parameters (they change the backward), its precision,
    the padded ``capacity``, the backend, torch's thread count and the CPU's vector
    instructions."""
    described = {
        "code": code_fingerprint(),
        "model": dataclasses.asdict(model.config),
        "precision": getattr(model, "precision", "float32"),
        "loss": dataclasses.asdict(config.loss),
        "freeze": list(config.model.freeze),
        "capacity": dataclasses.asdict(capacity),
        "backend": config.run.compile_backend,
        "threads": torch.get_num_threads(),
        "cpu": torch.backends.cpu.get_cpu_capability(),
    }
    return json_digest(described)


def architecture(model: torch.nn.Module) -> str:
    """The model's configuration as a hex digest (what a build's size depends on most)."""
    return json_digest(dataclasses.asdict(model.config))


def _records() -> Path | None:
    root = default_root()
    return None if root is None else root / BUILDS


def _read_record(path: Path) -> dict | None:
    """The build record at ``path``, or None when it is missing or damaged (never trusted)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and isinstance(record.get("seconds"), int | float):
        return record
    return None


def expected_build(
    model: torch.nn.Module, config: TrainConfig, capacity: Capacity
) -> tuple[float, bool]:
    """(seconds, warm) the training graph of ``model`` and ``config`` at ``capacity`` is
    expected to take to build: ``WARM_TRAIN_SECONDS`` when this machine recorded it in the
    inductor cache folder this run uses and that folder still holds graphs, else the median of the
    cold builds recorded here for the same model configuration (other shapes, losses,
    threads), else ``COLD_TRAIN_SECONDS`` of its force mode."""
    key, same = build_key(model, config, capacity), architecture(model)
    default = COLD_TRAIN_SECONDS[model.config.forces]
    folder = _records()
    if folder is None or not folder.is_dir():
        return default, False
    cache, seen = use_persistent_inductor_cache(), []
    holds_graphs = Path(cache, INDUCTOR_GRAPHS).is_dir()
    for path in folder.glob("*.json"):
        record = _read_record(path)
        if record is None:
            continue
        if path.stem == key and record.get("inductor_cache") == cache and holds_graphs:
            return WARM_TRAIN_SECONDS, True
        if record.get("architecture") == same and record.get("cold") is True:
            seen.append(float(record["seconds"]))
    return (statistics.median(seen) if seen else default), False


def remember_build(run: Run) -> None:
    """Record that this run has its captured training graph (main rank, CPU, inductor; once
    per graph and cache folder). ``cold``: inductor built it (its FX graph cache missed), not
    loaded it; only cold builds count towards later cold estimates. A record that cannot be
    written is logged and skipped: the run goes on."""
    captured = run.step.captured
    if (
        run.rank != 0
        or captured is None
        or captured.stats.graphs == 0
        or captured.backend != "inductor"
        or run.engine.device.type != "cpu"
        or (folder := _records()) is None
    ):
        return
    from torch._dynamo.utils import counters

    path = folder / f"{build_key(run.model, run.config, run.train_sampler.capacity)}.json"
    cache = use_persistent_inductor_cache()
    known = _read_record(path)
    if known is not None and known.get("inductor_cache") == cache:
        return
    record = {
        "mode": run.model.config.forces,
        "architecture": architecture(run.model),
        "seconds": round(captured.stats.compile_seconds, 2),
        "cold": counters["inductor"]["fxgraph_cache_miss"] > 0,
        "inductor_cache": cache,
        "capacity": dataclasses.asdict(run.train_sampler.capacity),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record)
    except OSError as exc:
        log.warning("compile: build record %s not written (%s)", path, exc)
