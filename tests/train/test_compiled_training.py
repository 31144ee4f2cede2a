"""Compiled training (run.compile): packed, padded batches through the captured step give the
same losses as eager training on the same packed batches, with one graph and no recompile."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from fastchgnet.compile.decide import CompileDecision
from fastchgnet.files import write_json_atomic
from fastchgnet.train import compile_choice
from fastchgnet.train.config import TrainConfig, apply_overrides
from fastchgnet.train.loading import PaddedCollate, make_sampler, make_splits
from fastchgnet.train.model_setup import build_model
from fastchgnet.train.run import train
from tests.train.helpers import small_cache, step_losses, tiny_config


@pytest.mark.usefixtures("one_thread")
def test_compiled_training_matches_eager_on_the_same_packed_batches(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = small_cache(tmp_path / "cache", n=40)
    common = ["data.batching=packed", "run.max_steps=4", "optim.epochs=1", "run.log_every=1"]
    eager = train(tiny_config(cache, tmp_path / "eager", *common, "run.compile=off"))
    compiled = train(
        tiny_config(
            cache, tmp_path / "compiled", *common, "run.compile=on", "run.compile_backend=aot_eager"
        )
    )
    assert eager.global_step == compiled.global_step == 4
    expected, got = step_losses(tmp_path / "eager"), step_losses(tmp_path / "compiled")
    assert len(expected) == len(got) == 4
    assert got == pytest.approx(expected, rel=2e-4)
    # one graph for the whole run, never recompiled
    assert (compiled.graphs, compiled.recompiles) == (1, 0)
    # real structures only: padding slots and the dummy are not counted as trained
    data = tiny_config(cache, tmp_path / "eager", *common).data
    splits = make_splits(cache, data)
    sampler = make_sampler(splits, splits.train, data, (0, 1), 0, packed=True)
    real = sum(len(rank) for step in sampler.plan()[:4] for rank in step)
    assert compiled.structures == eager.structures == real
    assert compiled.structures < 4 * (sampler.capacity.structures + 1)
    # summary.json's rate after compile leaves out the first call's compile, and only that
    written = json.loads((tmp_path / "compiled" / "summary.json").read_text())
    assert 0 < written["compile_seconds"] < written["train_seconds"]
    stepping = written["train_seconds"] - written["compile_seconds"]
    assert written["structures_per_second_after_compile"] == pytest.approx(real / stepping)
    plain = json.loads((tmp_path / "eager" / "summary.json").read_text())
    assert plain["compile_seconds"] == 0
    assert plain["structures_per_second_after_compile"] == plain["structures_per_second"]


def test_compile_needs_one_padded_shape() -> None:
    config = apply_overrides(TrainConfig(), ["run.compile=on", "data.batching=balanced"])
    with pytest.raises(ValueError, match="one padded batch shape"):
        train(config)


def test_compile_auto_is_on_for_gpus_only() -> None:
    run = TrainConfig().run
    assert run.compile == "auto"
    assert run.compiles("cuda:0")
    assert not run.compiles("cpu")
    assert apply_overrides(TrainConfig(), ["run.compile=on"]).run.compiles("cpu")


# ------------------------------------------------- run.compile="auto" on a CPU: decided by timing


def decision_file(out_dir: Path) -> dict:
    return json.loads((out_dir / compile_choice.DECISION_FILE).read_text())


@pytest.mark.usefixtures("one_thread")
def test_auto_keeps_a_short_cpu_run_eager_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = small_cache(tmp_path / "cache", n=24)
    out = tmp_path / "run"
    summary = train(tiny_config(cache, out, "run.max_steps=3", "optim.epochs=1"))
    assert summary.graphs == 0
    recorded = decision_file(out)
    assert recorded["compile"] is False
    assert recorded["compile_seconds"] == compile_choice.COLD_TRAIN_SECONDS["conservative"]
    assert 0 < recorded["eager_seconds"] < 10
    assert "compile off for this conservative training on a CPU" in capsys.readouterr().out


@pytest.mark.usefixtures("one_thread")
def test_auto_compiles_a_cpu_run_where_compiling_pays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # a build that costs nothing pays for any run whose captured step, padded, costs less
    # than eager: the captured step, packed batches
    monkeypatch.setitem(compile_choice.COLD_TRAIN_SECONDS, "conservative", 0.0)
    monkeypatch.setattr(compile_choice, "train_work_fraction", lambda mode: 0.1)
    cache = small_cache(tmp_path / "cache", n=24)
    out = tmp_path / "run"
    config = tiny_config(
        cache, out, "run.max_steps=3", "optim.epochs=1", "run.compile_backend=aot_eager"
    )
    summary = train(config)
    assert (summary.graphs, summary.recompiles) == (1, 0)
    assert decision_file(out)["compile"] is True
    printed = capsys.readouterr().out
    assert "compile on for this conservative training" in printed
    assert "packed sampler" in printed


@pytest.mark.usefixtures("one_thread")
def test_auto_keeps_a_cpu_run_eager_when_padding_takes_the_gain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # even a free build does not pay where the packed batches' padding makes every captured
    # step cost more than the eager one on the unpadded batch: one tiny structure a batch,
    # padded to sizes of at least 32, with a captured step at 0.9 of eager's cost per entry
    monkeypatch.setitem(compile_choice.COLD_TRAIN_SECONDS, "conservative", 0.0)
    slow = {"conservative": 0.9, "direct": 0.9}
    monkeypatch.setattr(compile_choice, "TRAIN_WORK_FRACTION", {"AVX2": slow, "AVX512": slow})
    cache = small_cache(tmp_path / "cache", n=24)
    config = tiny_config(cache, tmp_path / "run", "optim.epochs=50", "data.batch_size=1")
    splits = make_splits(cache, config.data)
    padding = compile_choice.packed_padding(splits, config, 1)
    assert padding * compile_choice.train_work_fraction("conservative") > 1  # roomy
    model = build_model(config.model, 0)
    decision = compile_choice.choose(config, model, splits, tmp_path / "run", 0, 1, False)
    assert not decision.compile
    assert f"packed batches: {padding - 1:.0%} padding" in decision.reason
    assert decision.saved_seconds == 0


def test_an_avx512_cpu_expects_more_of_a_captured_step_than_an_avx2_one() -> None:
    from fastchgnet.compile.decide import decide

    fraction = compile_choice.train_work_fraction
    for mode in ("conservative", "direct"):
        assert fraction(mode, "AVX512") < fraction(mode, "AVX2") < 1
        assert fraction(mode, "VSX") == fraction(mode, "AVX2")  # a CPU not measured
    # stop 32's bench (batch 16, 41.9 % padding, 2 threads): a conservative eager step of
    # 313 ms, captured 199 ms; a 100-epoch run of 338 steps an epoch compiles on AVX-512 only
    steps, eager, padding = 33800, 0.313, 1.419
    cold = compile_choice.COLD_TRAIN_SECONDS["conservative"]
    margin = compile_choice.MARGIN
    for capability, compiles in (("AVX512", True), ("AVX2", False)):
        expected = min(1.0, fraction("conservative", capability) * padding)
        assert decide(steps, eager, cold, fraction=expected, margin=margin).compile is compiles
    assert fraction("conservative", "AVX512") * padding == pytest.approx(199 / 313, abs=0.1)


def test_an_amd_cpu_with_avx512_expects_of_a_captured_step_what_it_measured() -> None:
    fraction = compile_choice.train_work_fraction
    # stop 52's bench on an AMD EPYC (batch 16 at 1.0 % padding; 2 and 1 threads), ms
    for mode, eager, captured in (
        ("conservative", 164.6, 112.9),
        ("conservative", 250.8, 176.1),
        ("direct", 72.1, 57.6),
        ("direct", 110.1, 88.9),
    ):
        assert fraction(mode, "AVX512-AMD") * 1.01 == pytest.approx(captured / eager, abs=0.03)
        assert fraction(mode, "AVX512") < fraction(mode, "AVX512-AMD") < fraction(mode, "AVX2")


def test_packed_padding_is_what_the_compiled_runs_packed_batches_carry(tmp_path: Path) -> None:
    from fastchgnet.data.capacity import entries

    cache = small_cache(tmp_path / "cache", n=48)
    config = tiny_config(cache, tmp_path / "run", "data.batch_size=8", "run.seed=3")
    splits = make_splits(cache, config.data)
    sampler = make_sampler(splits, splits.train, config.data, (0, 1), 3, packed=True)
    sampler.set_epoch(0)
    sizes = splits.dataset.sizes[splits.train].sum(axis=1)
    batches = [batch for batch in sampler if batch]
    real = sum(int(sizes[batch].sum()) for batch in batches)
    # as the run's loader pads them: within the one capacity, to each batch's own sizes
    collate = PaddedCollate(sampler.capacity, fit=True)
    padded = 0
    for batch in batches:
        graphs, _ = collate([splits.dataset[int(splits.train[i])] for i in batch])
        padded += sum(graphs.atomic_numbers.shape + graphs.bond_atoms.shape[:1])
        padded += graphs.angle_edges.shape[0]
    assert padded < len(batches) * entries(sampler.capacity)
    assert compile_choice.packed_padding(splits, config, 1) == pytest.approx(padded / real)


def test_a_resumed_run_keeps_its_decision_without_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = small_cache(tmp_path / "cache", n=24)
    config = tiny_config(cache, tmp_path / "run")
    splits = make_splits(cache, config.data)
    started = CompileDecision(True, "compile on for this run: ...", 1.0, 2.0, 0.1)
    write_json_atomic(tmp_path / "run" / compile_choice.DECISION_FILE, started.__dict__)

    def no_timing(*args, **kwargs):
        raise AssertionError("a resumed run must not time the step again")

    monkeypatch.setattr(compile_choice, "time_eager_step", no_timing)
    model = build_model(config.model, 0)
    assert compile_choice.choose(config, model, splits, tmp_path / "run", 0, 1, True) == started


def test_timing_the_eager_step_changes_no_weight_and_leaves_no_gradient(tmp_path: Path) -> None:
    cache = small_cache(tmp_path / "cache", n=24)
    config = tiny_config(cache, tmp_path / "run")
    splits = make_splits(cache, config.data)
    model = build_model(config.model, 0).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seconds = compile_choice.time_eager_step(model, splits, 4, config.loss)
    assert seconds > 0
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_auto_is_decided_by_timing_only_on_cpus_with_auto_batching(tmp_path: Path) -> None:
    config = TrainConfig()
    assert compile_choice.auto_applies(config, "cpu")
    assert not compile_choice.auto_applies(config, "cuda")
    balanced = apply_overrides(config, ["data.batching=balanced"])
    assert not compile_choice.auto_applies(balanced, "cpu")
    assert not compile_choice.auto_applies(apply_overrides(config, ["run.compile=off"]), "cpu")


def test_training_steps_count_epochs_ranks_and_the_step_cap() -> None:
    config = apply_overrides(TrainConfig(), ["data.batch_size=4", "optim.epochs=3"])
    assert compile_choice.training_steps(config, 10, 1) == 9  # 3 batches of 4 per epoch
    assert compile_choice.training_steps(config, 10, 2) == 6  # 2 steps of 2 x 4 per epoch
    capped = apply_overrides(config, ["run.max_steps=5"])
    assert compile_choice.training_steps(capped, 10, 1) == 5


@pytest.mark.usefixtures("one_thread")
def test_a_run_checkpointed_before_decisions_were_kept_resumes_eager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = small_cache(tmp_path / "cache", n=24)
    out = tmp_path / "run"
    common = ["optim.epochs=2", "run.checkpoint_every=2", "run.max_steps=2"]
    train(tiny_config(cache, out, *common))
    (out / compile_choice.DECISION_FILE).unlink()  # as a run from before this file existed
    monkeypatch.setitem(compile_choice.COLD_TRAIN_SECONDS, "conservative", 0.0)  # would compile
    monkeypatch.setattr(compile_choice, "train_work_fraction", lambda mode: 0.1)
    config = tiny_config(cache, out, "optim.epochs=2", "run.compile_backend=aot_eager")
    splits = make_splits(cache, config.data)
    model = build_model(config.model, 0)
    resumed = compile_choice.choose(config, model, splits, out, 0, 1, True)
    assert not resumed.compile
    assert "started eager" in resumed.reason
    assert compile_choice.choose(config, model, splits, tmp_path / "new", 0, 1, False).compile


def test_a_new_graphs_first_backward_counts_as_compile_time() -> None:
    """AOTAutograd compiles the backward at its first call: that call's time is compile time
    (a cold GPU run spent ~30 s there, outside the forward's compile)."""
    from fastchgnet.compile import CapturedModel
    from fastchgnet.model.loss import LossConfig
    from fastchgnet.train.config import OptimConfig
    from fastchgnet.train.engine import TorchEngine
    from fastchgnet.train.step import TrainStep
    from tests.compile.conftest import padded_batch, small_model

    batch, labels = padded_batch()
    model = small_model("conservative").train()
    engine = TorchEngine(model, OptimConfig(lr=1e-3), total_steps=3, global_batch=2)
    captured = CapturedModel(model, backend="aot_eager")
    step = TrainStep(engine, LossConfig(), captured)
    backward, before_backward = engine.backward, []

    def slow_backward(loss: torch.Tensor) -> None:
        before_backward.append(captured.stats.compile_seconds)  # the forward's compile
        time.sleep(0.3)
        backward(loss)

    engine.backward = slow_backward
    step(batch, labels)
    first = captured.stats.compile_seconds
    assert first - before_backward[0] >= 0.3  # the first backward's 0.3 s is in
    step(batch, labels)  # the same graph again: nothing added
    assert captured.stats.compile_seconds == first == before_backward[1]
