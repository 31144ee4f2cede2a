"""A checkpoint records the data its run trained on (its cache's origin: each source file's
size and checksum), and a --resume checks the data it reads against it: changed data is
refused in one line even where the cache was deleted or rebuilt for it, while a cache
deleted or out of date is rebuilt from the unchanged data and the run continues exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from ase.io import read, write

from fastchgnet.data.cache import CacheError
from fastchgnet.data.origin import cache_origin
from fastchgnet.train.cache_sources import resolve_cache
from fastchgnet.train.checkpoint import (
    Progress,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    stored_data_origin,
)
from fastchgnet.train.config import DataConfig, apply_overrides
from fastchgnet.train.loading import quickstart_path
from tests.train.helpers import tiny_config

CUTOFFS = (6.0, 3.0)


def _source(path, start: int = 0, n: int = 24):
    """An extxyz file of ``n`` bundled quick-start structures from the ``start``-th."""
    write(str(path), read(str(quickstart_path()), index=f"{start}:{start + n}"))
    return path


def _checkpoint(out, cache) -> None:
    """A checkpoint in ``out`` whose run trained on ``cache`` (as ``epoch`` writes one)."""
    save_checkpoint(out / "checkpoints", rank=0, world_size=1, progress=Progress(global_step=3),
                    engine_state={}, model=None, config={}, history=[],
                    data_origin=cache_origin(cache))  # fmt: skip


@pytest.mark.parametrize("cache_now", ["deleted", "rebuilt for the new data"])
def test_resume_refuses_data_whose_source_changed_since_the_checkpoint(tmp_path, cache_now):
    # a cache deleted (or rebuilt) left nothing to compare: the changed file was converted
    # and the checkpoint's position applied to another batch plan, without a word
    config = DataConfig(source=str(_source(tmp_path / "f.extxyz")))
    out = tmp_path / "run"
    _checkpoint(out, resolve_cache(config, out, CUTOFFS, True))
    _source(tmp_path / "f.extxyz", start=1)  # another file under the same name
    shutil.rmtree(out / "cache")
    if cache_now != "deleted":
        resolve_cache(config, out, CUTOFFS, True)  # a run without --resume rebuilt it
    with pytest.raises(CacheError) as refused:
        resolve_cache(config, out, CUTOFFS, True, resume=True)
    said = str(refused.value)
    assert said.startswith(
        f"--resume: the data changed since the checkpoint (data.source={tmp_path / 'f.extxyz'}:"
    )
    assert "data.source.sha256: " in said
    assert "restore the data, or start a new run" in said


def test_resume_rebuilds_an_outdated_cache_of_the_unchanged_data(tmp_path, capsys):
    # any mismatch of the cache was refused on --resume as 'the data changed' (a cache format
    # or an unreadable record), though the data was the checkpoint's
    config = DataConfig(source=str(_source(tmp_path / "f.extxyz")))
    out = tmp_path / "run"
    cache = resolve_cache(config, out, CUTOFFS, True)
    _checkpoint(out, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    (cache / "manifest.json").write_text(json.dumps({**manifest, "format": 0}))
    assert resolve_cache(config, out, CUTOFFS, True, resume=True) == cache
    assert "format: 0 in the cache" in capsys.readouterr().out  # rebuilt, said
    assert cache_origin(cache) == manifest["origin"]


def test_resume_after_the_cache_was_deleted_still_continues_exactly(tmp_path):
    from fastchgnet.train.run import train

    source = _source(tmp_path / "f.extxyz")
    settings = ("optim.epochs=2", "run.compile=off", "run.checkpoint_every=3")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(tiny_config(source, straight, *settings))
    config = tiny_config(source, stopped, *settings, "run.max_steps=7")  # inside epoch 2
    train(config)
    assert stored_data_origin(stopped / "checkpoints") == cache_origin(stopped / "cache")
    shutil.rmtree(stopped / "cache")
    train(apply_overrides(config, ["run.max_steps=0"]), resume=True)
    a, b = (
        load_checkpoint(latest_checkpoint(o / "checkpoints"), 0, 1)[0] for o in (straight, stopped)
    )
    assert a["progress"]["global_step"] == b["progress"]["global_step"] > 7
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
