"""Checkpoints: atomic and verified; a damaged file is refused; RNG states come back."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.train.checkpoint import (
    CheckpointError,
    Progress,
    latest_checkpoint,
    load_checkpoint,
    rank_file,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tests.train.helpers import TINY_ARCHITECTURE


def _model() -> FastCHGNet:
    import json

    return FastCHGNet(**json.loads(TINY_ARCHITECTURE))


def _save(root, step: int, model: FastCHGNet, keep: int = 3):
    return save_checkpoint(
        root,
        rank=0,
        world_size=1,
        progress=Progress(epoch=1, step_in_epoch=2, global_step=step),
        engine_state={"optimizer": {"x": torch.arange(3)}},
        model=model,
        config={"run": {"seed": 0}},
        history=[{"epoch": 1, "energy_mae": 12.5}],
        keep=keep,
    )


def test_checkpoint_round_trips_model_progress_and_config(tmp_path) -> None:
    model = _model()
    folder = _save(tmp_path, 7, model)
    assert latest_checkpoint(tmp_path) == folder
    main, payloads = load_checkpoint(folder, 0, 1)
    for name, value in model.state_dict().items():
        assert torch.equal(main["model"][name], value)
    assert main["progress"] == {"epoch": 1, "step_in_epoch": 2, "global_step": 7, "bad_steps": 0}
    assert main["config"] == {"run": {"seed": 0}}
    assert len(payloads) == 1
    assert FastCHGNet(**main["model_config"]).config == model.config


def test_damaged_checkpoint_is_refused(tmp_path) -> None:
    folder = _save(tmp_path, 3, _model())
    path = rank_file(folder, 0)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(folder, 0, 1)


def test_other_world_size_is_refused(tmp_path) -> None:
    folder = _save(tmp_path, 3, _model())
    with pytest.raises(CheckpointError, match="same number"):
        load_checkpoint(folder, 0, 2)


def test_only_the_newest_checkpoints_are_kept(tmp_path) -> None:
    model = _model()
    for step in (2, 4, 6, 8):
        _save(tmp_path, step, model, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000006", "step-00000008"]
    assert latest_checkpoint(tmp_path).name == "step-00000008"


def test_rng_states_are_restored() -> None:
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1))  # noqa: NPY002
    set_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(1))  # noqa: NPY002
    assert first[:2] == second[:2]
    assert torch.equal(first[2], second[2])


def test_a_checkpoint_keeps_only_the_ranks_own_cuda_generator(monkeypatch) -> None:
    """On a GPU each rank saves and restores its current device's generator only, so a resume
    where each process sees a single GPU (or fewer than were saved) restores it all the same."""
    own = torch.arange(8, dtype=torch.uint8)
    restored: list[torch.Tensor] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: own)
    monkeypatch.setattr(torch.cuda, "set_rng_state", restored.append)
    state = rng_state()
    assert torch.equal(state["cuda"], own)
    set_rng_state(state)
    assert len(restored) == 1
    assert torch.equal(restored[0], own)
