"""NVTX: the one training step enters a range for every stage (data wait, host-to-device copy,
forward, loss, backward, gradient all-reduce, optimiser step), recorded through a stand-in
backend on the CPU, where real ranges are no-ops."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from fastchgnet.data.cache import GraphDataset
from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.model.loss import LossConfig
from fastchgnet.profiling import nvtx
from fastchgnet.train.checkpoint import Progress
from fastchgnet.train.config import OptimConfig
from fastchgnet.train.engine import TorchEngine
from fastchgnet.train.loading import collate_items
from fastchgnet.train.loop import train_epoch
from fastchgnet.train.progress import EpochProgress
from fastchgnet.train.step import TrainStep
from tests.train.helpers import TINY_ARCHITECTURE, run_one_rank, small_cache


class Recorder:
    """A range backend that records (depth, name) of every range entered."""

    def __init__(self) -> None:
        self.entered: list[tuple[int, str]] = []
        self.depth = 0

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.entered.append((self.depth, name))
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


@pytest.fixture
def recorder():
    recording = Recorder()
    previous = nvtx.set_backend(recording)
    yield recording
    nvtx.set_backend(previous)


def test_a_real_training_step_enters_every_stage_in_order(tmp_path, recorder) -> None:
    dataset = GraphDataset(small_cache(tmp_path / "cache", n=4))
    batches = [collate_items([dataset[0], dataset[1]])]
    torch.manual_seed(0)
    model = FastCHGNet(**json.loads(TINY_ARCHITECTURE))
    engine = TorchEngine(model, OptimConfig(), total_steps=1, global_batch=2)
    reporter = EpochProgress(0, 1, 0, "lines", 1, 0)
    train_epoch(
        TrainStep(engine, LossConfig()),
        batches,
        Progress(),
        reporter,
        max_bad_steps=3,
        reads_at=lambda s: True,
    )
    names = [name for _, name in recorder.entered]
    assert names == [
        nvtx.DATA,
        nvtx.H2D,
        nvtx.STEP,
        nvtx.FORWARD,
        nvtx.LOSS,
        nvtx.BACKWARD,
        nvtx.OPTIMIZER,
        nvtx.DATA,  # the loader's end
    ]
    depth = dict((name, d) for d, name in recorder.entered)
    assert depth[nvtx.STEP] == 0
    assert all(depth[s] == 1 for s in (nvtx.FORWARD, nvtx.LOSS, nvtx.BACKWARD, nvtx.OPTIMIZER))


DEEPSPEED_STEP = """
import contextlib, json, sys, torch
from fastchgnet.profiling import nvtx
from fastchgnet.train import collectives
from fastchgnet.model.loss import LossConfig
from fastchgnet.train.config import OptimConfig
from fastchgnet.train.engine import DeepSpeedEngine, DEFAULT_DEEPSPEED_JSON
from fastchgnet.train.step import TrainStep
from tests.compile.conftest import padded_batch, small_model
entered = []
@contextlib.contextmanager
def record(name):
    entered.append(name)
    yield
nvtx.set_backend(record)
collectives.init_process_group(60)
model = small_model("direct")
engine = DeepSpeedEngine(model, OptimConfig(), 1, 4, DEFAULT_DEEPSPEED_JSON)
TrainStep(engine, LossConfig())(*padded_batch())
print("ENTERED", json.dumps(entered))
"""


@pytest.mark.slow
def test_deepspeeds_gradient_all_reduce_is_its_own_range_inside_backward(tmp_path) -> None:
    pytest.importorskip("deepspeed")
    stdout = run_one_rank(DEEPSPEED_STEP)
    line = next(x for x in stdout.splitlines() if x.startswith("ENTERED"))
    entered = json.loads(line.split(" ", 1)[1])
    assert nvtx.ALLREDUCE in entered
    assert entered.index(nvtx.BACKWARD) < entered.index(nvtx.ALLREDUCE)
    assert entered.index(nvtx.ALLREDUCE) < entered.index(nvtx.OPTIMIZER)
