"""Mixed precision (``FastCHGNet.set_precision("bf16")``): bfloat16 matrix products, float32
sums, geometry and outputs; eager, captured and in a training run."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from fastchgnet.compile import CapturedModel
from fastchgnet.model.layers import scatter_sum
from fastchgnet.train.config import apply_overrides
from fastchgnet.train.run import train
from tests.compile.conftest import padded_batch, small_model
from tests.train.helpers import small_cache, step_losses, tiny_config

FIELDS = ("energy", "forces", "stress", "magmoms")


def prediction(model, batch):
    return model(batch, compute_forces=True, compute_stress=True)


def test_scatter_sum_accumulates_bfloat16_in_float32() -> None:
    # 1000 ones into one row: a bfloat16 running sum stalls at 256 (256 + 1 rounds to 256)
    values = torch.ones(1000, 2, dtype=torch.bfloat16)
    summed = scatter_sum(values, torch.zeros(1000, dtype=torch.long), 1)
    assert summed.dtype == torch.float32
    assert summed.tolist() == [[1000.0, 1000.0]]


@pytest.mark.parametrize("forces", ["conservative", "direct"])
def test_bf16_prediction_is_float32_and_close_to_float32(forces: str) -> None:
    batch, _ = padded_batch()
    model = small_model(forces).eval()
    full = prediction(model, batch)
    mixed = prediction(model.set_precision("bf16"), batch)
    for name in FIELDS:
        a, b = getattr(full, name).detach(), getattr(mixed, name).detach()
        assert b.dtype == torch.float32, name
        scale = float(a.abs().max())
        # bfloat16 keeps 8 significant bits: differences of a few per cent of the scale at most
        assert float((a - b).abs().max()) <= 0.05 * scale + 1e-3, name
    # and it did run in bfloat16: the energies differ beyond float32 round-off
    assert float((full.energy - mixed.energy).detach().abs().max()) > 1e-6


def test_bf16_runs_the_interaction_blocks_in_bfloat16() -> None:
    batch, _ = padded_batch()
    model = small_model("conservative").eval().set_precision("bf16")
    seen: list[torch.dtype] = []
    model.atom_convs[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    model.energy_readout.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    prediction(model, batch)
    # the atom conv's residual sum stays float32; the readout MLP's output is bfloat16
    assert seen == [torch.float32, torch.bfloat16]


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision 'fp8'"):
        small_model("direct").set_precision("fp8")


@pytest.mark.parametrize("forces", ["conservative", "direct"])
def test_captured_bf16_training_equals_eager_bf16(forces: str) -> None:
    batch, labels = padded_batch()
    model = small_model(forces).train().set_precision("bf16")
    eager_loss, eager_prediction = CapturedModel(model, eager=True).loss(batch, labels)
    captured = CapturedModel(model, backend="aot_eager")
    loss, captured_prediction = captured.loss(batch, labels)
    torch.testing.assert_close(loss.detach(), eager_loss.detach(), rtol=1e-4, atol=1e-5)
    for name in FIELDS:
        torch.testing.assert_close(
            getattr(captured_prediction, name).detach(),
            getattr(eager_prediction, name).detach(),
            rtol=1e-4,
            atol=1e-5,
        )
    # the precision is traced into the graph: switching it builds another one
    model.set_precision("float32")
    captured.loss(batch, labels)
    assert captured.stats.graphs == 2


@pytest.mark.usefixtures("one_thread")
def test_a_bf16_training_run_follows_the_float32_run(tmp_path: Path) -> None:
    cache = small_cache(tmp_path / "cache", n=24)
    common = ["run.max_steps=3", "optim.epochs=1", "run.log_every=1", "run.compile=off"]
    full = train(tiny_config(cache, tmp_path / "float32", *common))
    mixed = train(tiny_config(cache, tmp_path / "bf16", *common, "run.precision=bf16"))
    full_losses, mixed_losses = step_losses(tmp_path / "float32"), step_losses(tmp_path / "bf16")
    assert mixed.global_step == full.global_step == 3
    # the same batches and weights: losses agree to bfloat16's few per cent, not bit for bit
    assert mixed_losses == pytest.approx(full_losses, rel=0.05)
    assert mixed_losses != full_losses
    with pytest.raises(ValueError, match="precision"):
        apply_overrides(tiny_config(cache, tmp_path / "bad"), ["run.precision=fp8"])


@pytest.mark.parametrize("hardware", [True, False])
def test_bf16_without_bf16_hardware_warns_that_it_is_emulated(monkeypatch, hardware) -> None:
    # on an AVX2 CPU bf16 ran 6-7x slower than float32 (bench_train_step, stop 27)
    from fastchgnet.model import precision

    monkeypatch.setattr(precision, "bf16_hardware", lambda device_type: hardware)
    model = small_model("conservative")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.set_precision("bf16")
        model.set_precision("float32")
    emulated = [w for w in caught if "emulated" in str(w.message)]
    assert len(emulated) == (0 if hardware else 1)
    if emulated:
        assert "bf16 on this cpu" in str(emulated[0].message)
        assert emulated[0].category is RuntimeWarning


def test_bf16_is_judged_for_the_device_the_model_will_run_on(monkeypatch) -> None:
    """Training sets the precision while the model is still on the host: a GPU run is judged
    by the GPU's bf16 hardware, not the host CPU's (no false "emulated" warning)."""
    from fastchgnet.model import precision

    monkeypatch.setattr(precision, "bf16_hardware", lambda device_type: device_type == "cuda")
    model = small_model("conservative")  # on the CPU
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.set_precision("bf16", "cuda")
    assert not [w for w in caught if "emulated" in str(w.message)]
    assert model.precision == "bf16"
    with pytest.warns(RuntimeWarning, match="bf16 on this cpu"):
        model.set_precision("bf16")


def test_bf16_is_refused_for_a_float64_model_where_it_would_change_nothing():
    """autocast leaves float64 products in float64: ``--precision bf16`` on a float64 model
    predicted exactly the float64 numbers, with no word."""
    from fastchgnet import FastCHGNet

    model = FastCHGNet(n_conv=2).double()
    with pytest.raises(ValueError, match=r"^precision bf16: this model is float64"):
        model.set_precision("bf16", "cpu")
    assert model.set_precision("float32", "cpu").precision == "float32"
