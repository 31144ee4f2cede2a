"""Training's compile decision remembers this machine's builds: a repeated run with the same
model, loss, capacity and threads expects a warm load, and cold estimates come from the
builds recorded here."""

from __future__ import annotations

import json
import shutil
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
    (inductor / compile_choice.INDUCTOR_GRAPHS).mkdir(parents=True)  # as inductor leaves it
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor))
    return tmp_path / "fastchgnet-cache" / "compiled"


def finished_build(
    config: TrainConfig, seconds: float, monkeypatch: pytest.MonkeyPatch, cold: bool = True
) -> SimpleNamespace:
    """What ``remember_build`` reads of a run that has its training graph, by inductor on a
    CPU, in ``seconds``: built (``cold``: inductor's FX graph cache missed) or loaded."""
    from torch._dynamo.utils import counters

    monkeypatch.setitem(counters["inductor"], "fxgraph_cache_miss", 1 if cold else 0)
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

    compile_choice.remember_build(finished_build(config, 120.0, monkeypatch))
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
    compile_choice.remember_build(finished_build(config, 30.0, monkeypatch))
    compile_choice.remember_build(finished_build(config, 99.0, monkeypatch))  # known: skipped
    # a graph of another shape loaded from inductor's cache (a code change made its key new):
    # recorded, but no cold build
    loaded = tiny_config(cache, tmp_path / "loaded", "data.batch_size=6")
    compile_choice.remember_build(finished_build(loaded, 5.0, monkeypatch, cold=False))
    records = [json.loads(p.read_text()) for p in store.joinpath(compile_choice.BUILDS).glob("*")]
    assert sorted((r["seconds"], r["cold"]) for r in records) == [(5.0, False), (30.0, True)]
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
    run = finished_build(config, 30.0, monkeypatch)
    compile_choice.remember_build(run)
    capacity = run.train_sampler.capacity
    expected = compile_choice.expected_build(run.model, config, capacity)
    assert expected == (compile_choice.WARM_TRAIN_SECONDS, True)
    # damaged records are skipped, never trusted
    builds = store / compile_choice.BUILDS
    builds.joinpath("list.json").write_text("[1, 2]")
    builds.joinpath("no-seconds.json").write_text('{"seconds": null, "cold": true}')
    assert compile_choice.expected_build(run.model, config, capacity) == expected
    # another inductor cache folder, even one holding graphs, does not hold this one
    other = tmp_path / "other-inductor"
    (other / compile_choice.INDUCTOR_GRAPHS).mkdir(parents=True)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(other))
    assert compile_choice.expected_build(run.model, config, capacity) == (30.0, False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    shutil.rmtree(tmp_path / "inductor")  # the cache was cleared
    assert compile_choice.expected_build(run.model, config, capacity) == (30.0, False)
    # other threads or frozen parameters make another graph; another architecture has no
    # build on record
    key = compile_choice.build_key(run.model, config, capacity)
    frozen = tiny_config(cache, tmp_path / "first", 'model.freeze=["atom_embedding"]')
    assert compile_choice.build_key(run.model, frozen, capacity) != key
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
    assert written["cold"] is True  # built into the empty cache, not loaded
    compile_seconds = json.loads((tmp_path / "run" / "summary.json").read_text())["compile_seconds"]
    assert written["seconds"] == pytest.approx(compile_seconds, abs=0.01)
    assert written["seconds"] > 0
    model = build_model(config.model, 0)
    splits = make_splits(cache, config.data)
    capacity = packing_inputs(splits, splits.train, config.data.batch_size)[1]
    assert record.stem == compile_choice.build_key(model, config, capacity)
    assert compile_choice.expected_build(model, config, capacity)[1]  # warm next time


def test_a_record_that_cannot_be_written_leaves_the_run_going(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compile_choice, "write_json_atomic", full_disk)
    config = tiny_config(small_cache(tmp_path / "cache", n=24), tmp_path / "run")
    compile_choice.remember_build(finished_build(config, 30.0, monkeypatch))
    assert "not written (" in caplog.text
    assert "No space left on device" in caplog.text
