"""The steady-state training loop reads nothing on the host between the loop's reads: every
tensor-to-host call (.item(), .tolist(), .cpu(), .numpy(), float(), int(), bool(), boolean-mask
indexing) made inside ``train_epoch`` is counted, through a real CPU run of the one step."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from fastchgnet.data.cache import GraphDataset
from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.model.direct_heads import structure_volume
from fastchgnet.model.loss import LossConfig
from fastchgnet.train.checkpoint import Progress
from fastchgnet.train.config import OptimConfig
from fastchgnet.train.data import collate_items
from fastchgnet.train.engine import TorchEngine
from fastchgnet.train.loop import train_epoch
from fastchgnet.train.progress import EpochProgress
from fastchgnet.train.step import TrainStep
from tests.train.helpers import TINY_ARCHITECTURE, small_cache

HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


def count_host_reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Patch torch.Tensor so every host read (and boolean-mask indexing) is counted."""
    counts: Counter = Counter()
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    getitem = torch.Tensor.__getitem__

    def indexed(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            counts["boolean mask"] += 1
        return getitem(self, index)

    monkeypatch.setattr(torch.Tensor, "__getitem__", indexed)
    return counts


@pytest.mark.parametrize("forces", ["conservative", "direct"])
def test_steady_state_makes_one_host_read_per_log_interval(tmp_path, monkeypatch, forces) -> None:
    dataset = GraphDataset(small_cache(tmp_path / "cache", n=12))
    batches = [collate_items([dataset[i] for i in range(k, k + 2)]) for k in range(0, 12, 2)]
    torch.manual_seed(0)
    architecture = {**json.loads(TINY_ARCHITECTURE), "forces": forces}
    model = FastCHGNet(**architecture)
    engine = TorchEngine(model, OptimConfig(lr=1e-3), total_steps=12, global_batch=2)
    step = TrainStep(engine, LossConfig())
    reads: list[int] = []
    reporter = EpochProgress(0, 2 * len(batches), 0, "lines", 1000, 0)
    counts = count_host_reads(monkeypatch)
    train_epoch(
        step,
        batches + batches,  # 12 steps, read every 6th (the last is also the epoch's end)
        Progress(),
        reporter,
        max_bad_steps=3,
        reads_at=lambda s: s % 6 == 0,
        on_read=lambda progress, window: reads.append(progress.global_step),
    )
    monkeypatch.undo()
    assert reads == [6, 12]
    assert counts == Counter({"tolist": 2}), counts  # one transfer per read, nothing else


def test_closed_form_cell_volume_equals_the_determinant() -> None:
    generator = torch.Generator().manual_seed(0)
    lattice = torch.randn(64, 3, 3, generator=generator, dtype=torch.float64) * 4
    lattice[::2] = lattice[::2].flip(1)  # left-handed cells too
    expected = torch.linalg.det(lattice).abs()
    torch.testing.assert_close(structure_volume(lattice), expected, rtol=1e-12, atol=1e-12)
