"""The loop: a non-finite loss skips the step (weights and optimiser state untouched, decided on
the device) and too many in a row stop the run at the next read; a finite step changes the
weights; the steady state reads nothing on the host between reads."""

from __future__ import annotations

import json

import pytest
import torch

from fastchgnet.data.cache import GraphDataset
from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.model.loss import LossConfig
from fastchgnet.train.checkpoint import Progress
from fastchgnet.train.config import OptimConfig
from fastchgnet.train.engine import TorchEngine
from fastchgnet.train.loading import collate_items
from fastchgnet.train.loop import NonFiniteLossError, train_epoch
from fastchgnet.train.progress import EpochProgress
from fastchgnet.train.step import TrainStep
from tests.train.helpers import TINY_ARCHITECTURE, small_cache


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> list:
    dataset = GraphDataset(small_cache(tmp_path_factory.mktemp("loop") / "cache", n=12))
    return [collate_items([dataset[i] for i in range(k, k + 4)]) for k in (0, 4, 8)]


def _poison(batch: tuple) -> tuple:
    graphs, labels = batch
    labels = labels.to("cpu")
    labels.energy = labels.energy.clone()
    labels.energy[0] = float("nan")
    return graphs, labels


def _run(batches: list, max_bad_steps: int, read_every: int = 1):
    torch.manual_seed(0)
    model = FastCHGNet(**json.loads(TINY_ARCHITECTURE))
    engine = TorchEngine(model, OptimConfig(lr=1e-2), total_steps=10, global_batch=4)
    step = TrainStep(engine, LossConfig())
    progress, snapshots = Progress(), []

    def snapshot(state: Progress) -> None:
        moments = [s["exp_avg"].clone() for s in engine.optimizer.state.values()]
        snapshots.append(({k: v.clone() for k, v in model.state_dict().items()}, moments))

    reporter = EpochProgress(0, len(batches), 0, "lines", 1000, 0)
    train_epoch(
        step,
        batches,
        progress,
        reporter,
        max_bad_steps=max_bad_steps,
        reads_at=lambda s: s % read_every == 0,
        on_step=snapshot,
    )
    return model, progress, snapshots


def test_non_finite_loss_skips_the_step_and_leaves_weights_and_moments_untouched(batches) -> None:
    _, progress, snapshots = _run([batches[0], _poison(batches[1]), batches[2]], 3)
    assert progress.global_step == 3
    assert progress.bad_steps == 0
    (weights_0, moments_0), (weights_1, moments_1), (weights_2, _) = snapshots
    for name, before in weights_0.items():
        assert torch.equal(before, weights_1[name]), name  # the poisoned step changed nothing
    assert all(torch.equal(a, b) for a, b in zip(moments_0, moments_1, strict=True))
    changed = [not torch.equal(weights_1[n], weights_2[n]) for n in weights_1]
    assert any(changed)  # the next finite step trained


def test_too_many_non_finite_losses_in_a_row_stop_the_run(batches) -> None:
    poisoned = [_poison(b) for b in batches]
    with pytest.raises(NonFiniteLossError, match="2 non-finite losses in a row"):
        _run(poisoned, 2)


def test_the_limit_is_checked_at_reads_so_the_run_stops_at_the_next_read(batches) -> None:
    poisoned = [_poison(b) for b in batches]
    # the limit (1) is reached at step 1, read only at step 2 (or at the epoch's last step)
    with pytest.raises(NonFiniteLossError) as error:
        _run(poisoned, 1, read_every=2)
    assert "3 non-finite losses in a row" not in str(error.value)
    assert "2 non-finite losses in a row" in str(error.value)


def test_a_finite_loss_with_a_non_finite_gradient_is_skipped_too(batches) -> None:
    torch.manual_seed(0)
    model = FastCHGNet(**json.loads(TINY_ARCHITECTURE))
    engine = TorchEngine(model, OptimConfig(lr=1e-2), total_steps=10, global_batch=4)
    step = TrainStep(engine, LossConfig())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model.atom_embedding.weight
    handle = weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    step(*batches[0])
    handle.remove()
    window = step.read()
    assert (window.finite, window.skipped) == (0, 1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    step(*batches[1])
    assert step.read().finite == 1


def test_the_gradients_flag_joins_the_ranks_collective(batches, monkeypatch) -> None:
    """Under ZeRO 1 a rank's own gradients can be non-finite where another's are not: the
    flag every rank agrees on (the one all-reduce) must carry the gradients' flag, not only
    the loss's."""
    import fastchgnet.train.step as step_module

    handed: list[float] = []

    def all_reduce(value: torch.Tensor, op: str) -> torch.Tensor:
        handed.append(float(value))
        return value

    monkeypatch.setattr(step_module, "all_reduce", all_reduce)
    torch.manual_seed(0)
    model = FastCHGNet(**json.loads(TINY_ARCHITECTURE))
    engine = TorchEngine(model, OptimConfig(lr=1e-2), total_steps=10, global_batch=4)
    step = TrainStep(engine, LossConfig())
    handle = model.atom_embedding.weight.register_hook(
        lambda grad: torch.full_like(grad, float("nan"))
    )
    step(*batches[0])
    handle.remove()
    step(*batches[1])
    assert handed == [1.0, 0.0]


def test_sync_check_spares_the_first_steps_this_process_runs_even_when_resumed(
    batches, monkeypatch
) -> None:
    """A resumed run (global step 100) compiles and records its graphs again in its first
    steps: those run outside the sync-debug "error" mode, counted per process."""
    from fastchgnet.train.loop import SyncCheck

    modes: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    check = SyncCheck(True, warmup=2)
    torch.manual_seed(0)
    model = FastCHGNet(**json.loads(TINY_ARCHITECTURE))
    engine = TorchEngine(model, OptimConfig(lr=1e-2), total_steps=200, global_batch=4)
    step = TrainStep(engine, LossConfig())
    progress = Progress(epoch=3, global_step=100)
    reporter = EpochProgress(0, 2 * len(batches), 0, "lines", 1000, 0)
    train_epoch(
        step,
        batches + batches,
        progress,
        reporter,
        max_bad_steps=3,
        reads_at=lambda s: False,
        sync_check=check,
    )
    # six steps: two warm-up, three checked, the epoch's last reads (unchecked)
    checked = ["error", "default"]
    assert modes == ["default", "default", *checked, *checked, *checked, "default"]
    assert check.checked == 3


def test_each_read_means_the_windows_loss_over_every_ranks_steps_in_one_collective(
    batches, monkeypatch
) -> None:
    """train_log.csv's rows (``on_read``) held rank 0's own window mean while the epoch line
    is every rank's. Each read now sums the window's loss and finite steps over the ranks in
    one all-reduce (2 values, float64, on the accumulators' device) at the read step only, and
    the row is that sum's mean, weighted by finite steps (not a mean of the ranks' means)."""
    import fastchgnet.train.step as step_module

    other = torch.tensor([3.0, 1.0], dtype=torch.float64)  # another rank: 1 finite step, loss 3
    handed: list[tuple] = []

    def all_reduce(value: torch.Tensor, op: str = "sum") -> torch.Tensor:
        handed.append((op, value.device, value.dtype, tuple(value.shape)))
        return value + other if op == "sum" else value

    monkeypatch.setattr(step_module, "all_reduce", all_reduce)
    torch.manual_seed(0)
    model = FastCHGNet(**json.loads(TINY_ARCHITECTURE))
    engine = TorchEngine(model, OptimConfig(lr=1e-2), total_steps=10, global_batch=4)
    step, windows = TrainStep(engine, LossConfig()), []
    reporter = EpochProgress(0, len(batches), 0, "lines", 1000, 0)
    train_epoch(
        step,
        batches,
        Progress(),
        reporter,
        max_bad_steps=3,
        reads_at=lambda s: s % 2 == 0,  # reads at step 2 and at the epoch's last, step 3
        on_read=lambda state, window: windows.append(window),
    )
    flag = ("max", torch.device("cpu"), torch.float32, ())
    read = ("sum", torch.device("cpu"), torch.float64, (2,))
    assert handed == [flag, flag, read, flag, read]
    assert [w.finite for w in windows] == [2, 1]
    for window in windows:
        expected = (window.mean_loss * window.finite + 3.0) / (window.finite + 1)
        assert window.ranks_loss == pytest.approx(expected, rel=1e-12)
    # 2 finite steps here, 1 there: weighted 2:1, not the mean of the two means
    assert windows[0].ranks_loss != pytest.approx((windows[0].mean_loss + 3.0) / 2)
