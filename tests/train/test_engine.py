"""Engine: the learning rate scales with the global batch; the schedule is warm-up + cosine."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from fastchgnet.train.config import OptimConfig
from fastchgnet.train.engine import (
    DEFAULT_DEEPSPEED_JSON,
    TorchEngine,
    deepspeed_settings,
    make_scheduler,
    scaled_lr,
    zero_stage,
)
from tests.train.helpers import run_one_rank


@pytest.mark.parametrize(
    ("rule", "expected"), [("linear", 3e-4 * 4), ("sqrt", 3e-4 * 2), ("none", 3e-4)]
)
def test_learning_rate_scales_with_global_batch(rule: str, expected: float) -> None:
    config = OptimConfig(lr=3e-4, lr_reference_batch=128, lr_scaling=rule)
    assert math.isclose(scaled_lr(config, 512), expected)


def test_cosine_schedule_runs_from_lr_to_floor_after_warmup() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = make_scheduler(optimizer, OptimConfig(warmup_steps=2, min_lr_ratio=0.1), 12)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))  # after warm-up: falls


def test_frozen_parameters_are_not_given_to_the_optimizer() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)
    engine = TorchEngine(model, OptimConfig(), total_steps=10, global_batch=16)
    given = {id(p) for group in engine.optimizer.param_groups for p in group["params"]}
    assert id(model[0].weight) not in given
    assert id(model[1].weight) in given


def test_deepspeed_settings_turn_off_the_throughput_timer_that_synchronises(tmp_path) -> None:
    """DeepSpeed's throughput timer calls ``torch.cuda.synchronize()`` as every eager step
    starts and ends: off, unless the JSON configures the timers itself."""
    settings = deepspeed_settings(DEFAULT_DEEPSPEED_JSON, 4, 2, 0.0)
    assert settings["timers"] == {"throughput": {"enabled": False}}
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"timers": {"throughput": {"enabled": True}}}))
    assert deepspeed_settings(own, 4, 2, 0.0)["timers"]["throughput"]["enabled"] is True


def test_deepspeed_clips_only_under_zero1_and_our_engine_under_zero0() -> None:
    """ZeRO 0: DeepSpeed's clipping would copy host scalars to the device every step, so it
    is told 0 and ``DeepSpeedEngine.step`` clips; ZeRO 1 keeps DeepSpeed's own."""
    zero0 = deepspeed_settings(DEFAULT_DEEPSPEED_JSON, 4, 2, 5.0)
    zero1 = deepspeed_settings(DEFAULT_DEEPSPEED_JSON.with_name("deepspeed_zero1.json"), 4, 2, 5.0)
    assert (zero_stage(zero0), zero0["gradient_clipping"]) == (0, 0.0)
    assert (zero_stage(zero1), zero1["gradient_clipping"]) == (1, 5.0)


@pytest.mark.parametrize("half", ["fp16", "bf16"])
def test_deepspeed_clips_its_own_half_precision_copies_under_zero0(tmp_path, half) -> None:
    """With DeepSpeed's fp16 or bf16 on, the gradients it clips are its unscaled float32
    copies, which our engine never sees: DeepSpeed keeps the clipping."""
    path = tmp_path / "half.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 0}, half: {"enabled": True}}))
    assert deepspeed_settings(path, 4, 2, 5.0)["gradient_clipping"] == 5.0


DEEPSPEED_CLIP = """
import json, torch
from fastchgnet.model.loss import LossConfig
from fastchgnet.train import collectives
from fastchgnet.train.config import OptimConfig
from fastchgnet.train.engine import DEFAULT_DEEPSPEED_JSON, DeepSpeedEngine, TorchEngine
from fastchgnet.train.step import TrainStep
from tests.compile.conftest import padded_batch, small_model
collectives.init_process_group(60)
batch = padded_batch()
weights = {}
for name, clip in [("deepspeed", 1e-3), ("torch", 1e-3), ("unclipped", 0.0)]:
    model = small_model("direct")
    optim = OptimConfig(lr=1e-2, grad_clip=clip)
    if name == "deepspeed":
        engine = DeepSpeedEngine(model, optim, 1, 4, DEFAULT_DEEPSPEED_JSON)
        ds = engine.engine
        print("DEEPSPEED", json.dumps([ds.gradient_clipping(), ds.tput_timer.config.enabled]))
    else:
        engine = TorchEngine(model, optim, 1, 4)
    TrainStep(engine, LossConfig())(*batch)
    weights[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
same = torch.allclose(weights["deepspeed"], weights["torch"], rtol=0, atol=1e-7)
moved = not torch.allclose(weights["deepspeed"], weights["unclipped"], rtol=0, atol=1e-6)
print("RESULT", json.dumps([same, moved]))
"""


@pytest.mark.slow
def test_deepspeed_zero0_clips_on_the_device_as_the_torch_engine_does() -> None:
    """One DeepSpeed rank (ZeRO 0) with clipping: DeepSpeed itself clips nothing and times
    nothing (both would synchronise a GPU's host), and the weights after a step equal the
    torch engine's with the same clipping, and differ from an unclipped step's."""
    pytest.importorskip("deepspeed")
    stdout = run_one_rank(DEEPSPEED_CLIP)
    lines = {x.split(" ", 1)[0]: json.loads(x.split(" ", 1)[1]) for x in stdout.splitlines()
             if x.startswith(("DEEPSPEED", "RESULT"))}  # fmt: skip
    assert lines["DEEPSPEED"] == [0.0, False]
    assert lines["RESULT"] == [True, True]


DEEPSPEED_NONFINITE_GRADIENTS = """
import json, torch
from fastchgnet.model.loss import LossConfig
from fastchgnet.train import collectives
from fastchgnet.train.config import OptimConfig
from fastchgnet.train.engine import DEFAULT_DEEPSPEED_JSON, DeepSpeedEngine
from fastchgnet.train.step import TrainStep
from tests.compile.conftest import padded_batch, small_model
collectives.init_process_group(60)
batch = padded_batch()
seen = {}
for name in ("deepspeed.json", "deepspeed_zero1.json"):
    model = small_model("direct")
    settings = DEFAULT_DEEPSPEED_JSON.with_name(name)
    engine = DeepSpeedEngine(model, OptimConfig(lr=1e-2), 2, 4, settings)
    before = [p.detach().clone() for p in model.parameters()]
    first = next(p for p in model.parameters() if p.requires_grad)
    hook = first.register_hook(lambda grad: grad * float("inf"))  # a finite loss, NaN gradient
    step = TrainStep(engine, LossConfig())
    step(*batch)
    window = step.read()
    kept = all(torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))
    seen[name] = [window.finite, window.skipped, kept]
print("RESULT", json.dumps(seen))
"""


@pytest.mark.slow
def test_a_finite_loss_with_non_finite_gradients_is_skipped_and_counted_under_zero0_and_zero1():
    """DeepSpeed's ZeRO 1 sets every parameter's grad to None in its backward (its partition
    holds the gradients): the step's flag read the parameters and counted such a step as
    finite, so ``run.max_bad_steps`` never fired."""
    pytest.importorskip("deepspeed")
    stdout = run_one_rank(DEEPSPEED_NONFINITE_GRADIENTS)
    line = next(x for x in stdout.splitlines() if x.startswith("RESULT"))
    seen = json.loads(line.split(" ", 1)[1])
    assert seen == {"deepspeed.json": [0, 1, True], "deepspeed_zero1.json": [0, 1, True]}


def test_zero1_gradients_fall_back_to_the_parameters_where_deepspeed_keeps_no_slice():
    # DeepSpeed's BF16_Optimizer has no averaged_gradients (every rank raised at its first
    # step), and with optimiser offload the dict stays empty
    from types import SimpleNamespace

    from fastchgnet.train.engine import DeepSpeedEngine

    weight = torch.nn.Parameter(torch.ones(2))
    weight.grad = torch.tensor([1.0, float("nan")])
    for optimizer in (SimpleNamespace(), SimpleNamespace(averaged_gradients={})):
        engine = SimpleNamespace(zero_stage=1, params=[weight], optimizer=optimizer)
        assert DeepSpeedEngine.gradients(engine) == [weight.grad]
    sliced = SimpleNamespace(averaged_gradients={0: [torch.zeros(3), None]})
    engine = SimpleNamespace(zero_stage=1, params=[weight], optimizer=sliced)
    (only,) = DeepSpeedEngine.gradients(engine)
    assert only.shape == (3,)


def test_sync_debug_is_refused_only_where_deepspeeds_own_step_waits_for_the_host(
    tmp_path,
) -> None:
    from fastchgnet.train.engine import check_deepspeed_config

    zero1 = DEFAULT_DEEPSPEED_JSON.with_name("deepspeed_zero1.json")
    bf16 = tmp_path / "bf16.json"
    bf16.write_text(json.dumps({"bf16": {"enabled": True}}))
    check_deepspeed_config(DEFAULT_DEEPSPEED_JSON, sync_debug=True)  # ZeRO 0, float32: ours
    check_deepspeed_config(zero1, sync_debug=False)
    with pytest.raises(ValueError, match="asks for ZeRO stage 1, whose DeepSpeed optimiser"):
        check_deepspeed_config(zero1, sync_debug=True)
    with pytest.raises(ValueError, match="asks for ZeRO stage 0 with bf16"):
        check_deepspeed_config(bf16, sync_debug=True)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        check_deepspeed_config(listed, sync_debug=False)
