"""What a training run's stages share (``Run``) and what a finished run returns
(``RunSummary``); the stages are in run.py (setup to resume), epoch.py and finish.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastchgnet.signals import StopSignals
from fastchgnet.train.checkpoint import (
    Progress,
)
from fastchgnet.train.config import TrainConfig
from fastchgnet.train.loading import (
    EpochBatches,
    Splits,
)
from fastchgnet.train.loop import SyncCheck
from fastchgnet.train.metrics import MetricSums
from fastchgnet.train.options import TrainingOptions
from fastchgnet.train.progress import Scalars
from fastchgnet.train.step import TrainStep


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
    counted: int = 0  # steps of the epoch whose structures are in progress.structures
    scalars: Scalars | None = None
    options: TrainingOptions | None = None
    train_batches: EpochBatches | None = None
    sync_check: SyncCheck | None = None
    train_loader: object = None
    signals: StopSignals = field(default_factory=StopSignals)
    checkpoint_step: int | None = None  # the global step of the last checkpoint written
    epoch_started: float | None = None  # perf_counter at the epoch's start, while it trains
    seconds_before: float = 0.0  # progress.train_seconds when the epoch's training began
    token: str = ""  # the launch's, agreed by every rank ("" in one process)
    data_origin: dict | None = None  # what the cache was built from, kept in each checkpoint

    @property
    def model(self) -> torch.nn.Module:
        return self.engine.module
