"""Training's compile decision remembers this machine's builds: a repeated run with the same
model, loss, capacity and threads expects a warm load, and cold estimates come from the
builds recorded here."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fastchgnet.train import compile_choice
from fastchgnet.train.config import TrainConfig
from fastchgnet.train.loading import make_sampler, make_splits, packing_inputs
from fastchgnet.train.model_setup import build_model
from fastchgnet.train.run import train
from tests.train.helpers import small_cache, tiny_config


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty compiled store (and inductor cache folder) for this test alone."""
    monkeypatch.setenv("FASTCHGNET_CACHE_DIR", str(tmp_path / "fastchgnet-cache"))
    inductor = tmp_path / "inductor"
    inductor.mkdir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor))
    return tmp_path / "fastchgnet-cache" / "compiled"


def finished_build(config: TrainConfig, seconds: float) -> SimpleNamespace:
    """What ``remember_build`` reads of a run that built its training graph with inductor on
    a CPU in ``seconds``."""
    model = build_model(config.model, 0)
    splits = make_splits(Path(config.data.source), config.data)
    sampler = make_sampler(splits, splits.train, config.data, (0, 1), 0, packed=True)
    stats = SimpleNamespace(graphs=1, compile_seconds=seconds)
    return SimpleNamespace(
        rank=0,
        model=model,
        config=config,
        train_sampler=sampler,
        step=SimpleNamespace(captured=SimpleNamespace(backend="inductor", stats=stats)),
        engine=SimpleNamespace(device=torch.device("cpu")),
    )


def decision_for(config: TrainConfig, out: Path, monkeypatch: pytest.MonkeyPatch):
    """The decision of a run of ``config`` whose eager step takes 0.5 s and whose captured
    step, padded, takes a tenth of eager's work per entry."""
    monkeypatch.setattr(compile_choice, "time_eager_step", lambda *args, **kwargs: 0.5)
    monkeypatch.setattr(compile_choice, "train_work_fraction", lambda mode: 0.1)
    model = build_model(config.model, 0)
    splits = make_splits(Path(config.data.source), config.data)
    return compile_choice.choose(config, model, splits, out, 0, 1, False)


@pytest.mark.usefixtures("one_thread")
def test_a_repeated_run_expects_a_warm_build_and_compiles_a_shorter_run(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = small_cache(tmp_path / "cache", n=24)
    config = tiny_config(cache, tmp_path / "first", "optim.epochs=20")
    first = decision_for(config, tmp_path / "first", monkeypatch)
    assert not first.compile  # ~100 steps do not repay a cold build with the margin
    assert first.compile_seconds == compile_choice.COLD_TRAIN_SECONDS["conservative"]
    assert "cold build" in first.reason

    compile_choice.remember_build(finished_build(config, seconds=120.0))
    (record,) = store.joinpath(compile_choice.BUILDS).glob("*.json")
    assert json.loads(record.read_text())["seconds"] == 120.0

    again = tiny_config(cache, tmp_path / "again", "optim.epochs=20", "optim.lr=3e-4")
    warm = decision_for(again, tmp_path / "again", monkeypatch)
    assert warm.compile  # the same graph loads in seconds: the same run now pays
    assert warm.compile_seconds == compile_choice.WARM_TRAIN_SECONDS
    assert "built here before" in warm.reason


@pytest.mark.usefixtures("one_thread")
def test_another_shape_is_a_cold_build_estimated_from_the_builds_recorded_here(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = small_cache(tmp_path / "cache", n=24)
    config = tiny_config(cache, tmp_path / "first")
    compile_choice.remember_build(finished_build(config, seconds=30.0))
    compile_choice.remember_build(finished_build(config, seconds=99.0))  # warm: not recorded
    bigger = tiny_config(cache, tmp_path / "bigger", "data.batch_size=8")
    splits = make_splits(cache, bigger.data)
    capacities = [
        packing_inputs(splits, splits.train, c.data.batch_size)[1] for c in (config, bigger)
    ]
    assert capacities[0] != capacities[1]
    decision = decision_for(bigger, tmp_path / "bigger", monkeypatch)
    assert decision.compile_seconds == 30.0  # this machine's cold build, not the default
    assert "cold build" in decision.reason


def test_a_build_whose_inductor_cache_is_gone_is_cold_again(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = small_cache(tmp_path / "cache", n=24)
    config = tiny_config(cache, tmp_path / "first")
    run = finished_build(config, seconds=30.0)
    compile_choice.remember_build(run)
    capacity = run.train_sampler.capacity
    expected = compile_choice.expected_build(run.model, config, capacity)
    assert expected == (compile_choice.WARM_TRAIN_SECONDS, True)
    (tmp_path / "inductor").rmdir()
    assert compile_choice.expected_build(run.model, config, capacity) == (30.0, False)
    # a key of other threads is another graph; another architecture has no build on record
    key = compile_choice.build_key(run.model, config, capacity)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)
    assert compile_choice.build_key(run.model, config, capacity) != key
    wider = build_model(tiny_config(cache, tmp_path, "model.architecture.atom_fea_dim=32").model, 0)
    assert compile_choice.expected_build(wider, config, capacity) == (
        compile_choice.COLD_TRAIN_SECONDS["conservative"],
        False,
    )


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_compiled_cpu_run_records_its_build_for_the_next_run(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = small_cache(tmp_path / "cache", n=24)
    config = tiny_config(cache, tmp_path / "run", "run.compile=on", "run.max_steps=2")
    summary = train(config)
    assert summary.graphs == 1
    (record,) = store.joinpath(compile_choice.BUILDS).glob("*.json")
    written = json.loads(record.read_text())
    assert written["mode"] == "conservative"
    compile_seconds = json.loads((tmp_path / "run" / "summary.json").read_text())["compile_seconds"]
    assert written["seconds"] == pytest.approx(compile_seconds, abs=0.01)
    assert written["seconds"] > 0
    model = build_model(config.model, 0)
    splits = make_splits(cache, config.data)
    capacity = packing_inputs(splits, splits.train, config.data.batch_size)[1]
    assert record.stem == compile_choice.build_key(model, config, capacity)
    assert compile_choice.expected_build(model, config, capacity)[1]  # warm next time
