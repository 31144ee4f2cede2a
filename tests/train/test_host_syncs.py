"""The steady-state training loop reads nothing on the host between the loop's reads: every
tensor-to-host call (.item(), .tolist(), .cpu(), .numpy(), float(), int(), bool(), boolean-mask
indexing) made inside ``train_epoch`` is counted (a torch function mode sees every tensor
method call), through a real CPU run of the one step."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode

from fastchgnet.data.cache import GraphDataset
from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.model.direct_heads import structure_volume
from fastchgnet.model.loss import LossConfig
from fastchgnet.train.checkpoint import Progress
from fastchgnet.train.config import OptimConfig
from fastchgnet.train.engine import TorchEngine
from fastchgnet.train.loading import collate_items
from fastchgnet.train.loop import train_epoch
from fastchgnet.train.progress import EpochProgress
from fastchgnet.train.step import TrainStep
from tests.train.helpers import TINY_ARCHITECTURE, small_cache

HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


class HostReads(TorchFunctionMode):
    """Counts every host read of a tensor (and boolean-mask indexing) inside the block, as
    torch dispatches tensor methods to the active function mode: nothing is patched."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.counts[name] += 1
        elif name == "__getitem__":
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in index):
                self.counts["boolean mask"] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("forces", ["conservative", "direct"])
def test_steady_state_makes_one_host_read_per_log_interval(tmp_path, forces) -> None:
    dataset = GraphDataset(small_cache(tmp_path / "cache", n=12))
    batches = [collate_items([dataset[i] for i in range(k, k + 2)]) for k in range(0, 12, 2)]
    torch.manual_seed(0)
    architecture = {**json.loads(TINY_ARCHITECTURE), "forces": forces}
    model = FastCHGNet(**architecture)
    engine = TorchEngine(model, OptimConfig(lr=1e-3), total_steps=12, global_batch=2)
    step = TrainStep(engine, LossConfig())
    reads: list[int] = []
    reporter = EpochProgress(0, 2 * len(batches), 0, "lines", 1000, 0)
    with HostReads() as mode:
        train_epoch(
            step,
            batches + batches,  # 12 steps, read every 6th (the last is also the epoch's end)
            Progress(),
            reporter,
            max_bad_steps=3,
            reads_at=lambda s: s % 6 == 0,
            on_read=lambda progress, window: reads.append(progress.global_step),
        )
    assert reads == [6, 12]
    assert mode.counts == Counter({"tolist": 2}), mode.counts  # one transfer per read, nothing else


def test_closed_form_cell_volume_equals_the_determinant() -> None:
    generator = torch.Generator().manual_seed(0)
    lattice = torch.randn(64, 3, 3, generator=generator, dtype=torch.float64) * 4
    lattice[::2] = lattice[::2].flip(1)  # left-handed cells too
    expected = torch.linalg.det(lattice).abs()
    torch.testing.assert_close(structure_volume(lattice), expected, rtol=1e-12, atol=1e-12)
