"""Compiled training (run.compile): packed, padded batches through the captured step give the
same losses as eager training on the same packed batches, with one graph and no recompile."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fastchgnet.train.config import TrainConfig, apply_overrides
from fastchgnet.train.loading import make_sampler, make_splits
from fastchgnet.train.run import train
from tests.train.helpers import small_cache, tiny_config


def step_losses(out_dir: Path) -> list[float]:
    with (out_dir / "train_log.csv").open() as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


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
