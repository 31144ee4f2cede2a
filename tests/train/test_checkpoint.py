"""Checkpoints: atomic and verified; a damaged file is refused; RNG states come back."""

from __future__ import annotations

import random
import shutil

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
    assert Progress(**main["progress"]) == Progress(epoch=1, step_in_epoch=2, global_step=7)
    assert main["config"] == {"run": {"seed": 0}}
    assert len(payloads) == 1
    assert FastCHGNet(**main["model_config"]).config == model.config


def _damage(path) -> None:
    """Flip one byte in the middle of ``path``."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_checkpoint_is_refused(tmp_path) -> None:
    folder = _save(tmp_path, 3, _model())
    _damage(rank_file(folder, 0))
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


def _save_ranks(root, world: int, model: FastCHGNet, steps=None):
    """A checkpoint of ``world`` ranks at step 5 (``steps``: each rank's recorded step); each
    rank's loss totals and seconds are its own, as in a run."""
    for rank in range(world):
        step = 5 if steps is None else steps[rank]
        own = {"epoch_loss": 2.4 + 0.1 * rank, "train_seconds": 10.0 + rank}
        folder = save_checkpoint(
            root,
            rank=rank,
            world_size=world,
            progress=Progress(epoch=0, step_in_epoch=step, global_step=5, **own),
            engine_state={"optimizer": {"rank": rank}},
            model=model if rank == 0 else None,
            config={},
            history=[],
        )
    return folder


def test_a_rank_reads_rank_0s_file_and_its_own_only(tmp_path, monkeypatch) -> None:
    from fastchgnet.train import checkpoint

    folder = _save_ranks(tmp_path, 4, _model())
    read = []
    original = checkpoint.read_verified
    monkeypatch.setattr(checkpoint, "read_verified", lambda p: read.append(p.name) or original(p))
    main, payloads = load_checkpoint(folder, 2, 4)
    assert read == ["rank-00000.pt", "rank-00002.pt"]
    assert [p is not None for p in payloads] == [True, False, True, False]
    assert payloads[2]["engine"] == {"optimizer": {"rank": 2}}
    assert "model" in main
    read.clear()
    _, payloads = load_checkpoint(folder, 0, 4)
    assert read == ["rank-00000.pt"]
    read.clear()
    _, payloads = load_checkpoint(
        folder, 1, 4, every_rank=lambda own: own["engine"]["optimizer"] == {"rank": 1}
    )
    assert len(read) == 4
    assert all(p is not None for p in payloads)


def test_resume_takes_the_stored_config_without_reading_a_rank_file(tmp_path, monkeypatch):
    """``fastchgnet train --resume`` reads the stored config from ``latest.json``: with the
    resume itself, rank 0's file is read once per rank (2N reads for N ranks, not 3N)."""
    import argparse
    import json

    from fastchgnet.cli.train import resolve_config
    from fastchgnet.train import checkpoint
    from fastchgnet.train.config import TrainConfig

    stored = TrainConfig().to_dict()
    stored["run"]["out_dir"], stored["optim"]["epochs"] = str(tmp_path), 7
    root = tmp_path / "checkpoints"
    save_checkpoint(
        root,
        rank=0,
        world_size=1,
        progress=Progress(epoch=1, step_in_epoch=0, global_step=3),
        engine_state={},
        model=_model(),
        config=stored,
        history=[],
    )
    read = []
    original = checkpoint.read_verified
    monkeypatch.setattr(checkpoint, "read_verified", lambda p: read.append(p.name) or original(p))
    args = argparse.Namespace(
        config=None, overrides=[f"run.out_dir={tmp_path}", "optim.lr=0.5"], resume=True
    )
    config = resolve_config(args)
    assert read == []
    assert (config.optim.epochs, config.optim.lr) == (7, 0.5)  # stored, then the overrides
    # a pointer written before it held the config: the config comes from rank 0's file
    pointer = json.loads((root / "latest.json").read_text())
    del pointer["config"]
    (root / "latest.json").write_text(json.dumps(pointer))
    assert resolve_config(args).optim.epochs == 7
    assert read == ["rank-00000.pt"]


def test_a_damaged_file_fails_the_ranks_that_read_it(tmp_path) -> None:
    folder = _save_ranks(tmp_path, 3, _model())
    _damage(rank_file(folder, 2))
    load_checkpoint(folder, 1, 3)  # rank 1 does not read rank 2's file
    with pytest.raises(CheckpointError, match="rank-00002"):
        load_checkpoint(folder, 2, 3)
    with pytest.raises(CheckpointError, match="rank-00002"):
        load_checkpoint(folder, 1, 3, every_rank=lambda own: True)


def test_a_rank_file_at_another_position_is_named_and_own_totals_load(tmp_path) -> None:
    """The ranks' own loss totals and seconds differ in every run: a check of the whole
    progress refused every resume on two ranks (it is the position that must agree)."""
    folder = _save_ranks(tmp_path / "same", 2, _model())
    main, payloads = load_checkpoint(folder, 1, 2)
    assert payloads[1]["progress"]["epoch_loss"] != main["progress"]["epoch_loss"]
    folder = _save_ranks(tmp_path / "other", 2, _model(), steps=[5, 4])
    with pytest.raises(CheckpointError, match=r"rank-00001\.pt: records another position"):
        load_checkpoint(folder, 1, 2)


def test_every_rank_stops_when_another_ranks_file_fails(tmp_path, monkeypatch) -> None:
    from types import SimpleNamespace

    from fastchgnet.train import collectives
    from fastchgnet.train.run import resume_from_checkpoint

    _save_ranks(tmp_path / "checkpoints", 2, _model())
    engine = SimpleNamespace(needs_every_shard=lambda own: False)
    run = SimpleNamespace(out=tmp_path, rank=0, world_size=2, engine=engine)
    gathered = []

    def gather(seen):  # rank 1 could not read its file; rank 0 could
        gathered.append(seen)
        return [seen, (seen[0], "rank 1: rank-00001.pt: checksum mismatch", True)]

    monkeypatch.setattr(collectives, "all_gather_objects", gather)
    with pytest.raises(CheckpointError, match=r"rank-00001\.pt: checksum mismatch"):
        resume_from_checkpoint(run)
    # rank 0's own read was fine, and it stopped: no older checkpoint to fall back to
    assert gathered == [("step-00000005", "", False)]


def test_a_resume_refuses_a_stored_config_changed_after_it_was_written(tmp_path) -> None:
    """The config in ``latest.json`` (which ``--resume`` starts from) is checked against the
    checksummed copy in rank 0's file: an edited pointer stops the resume in one line."""
    import json
    from types import SimpleNamespace

    from fastchgnet.train.run import resume_from_checkpoint

    _save_ranks(tmp_path / "checkpoints", 1, _model())
    pointer = tmp_path / "checkpoints" / "latest.json"
    fields = json.loads(pointer.read_text())
    assert fields["config"] == {}
    fields["config"] = {"optim": {"lr": 1.0}}
    pointer.write_text(json.dumps(fields))
    engine = SimpleNamespace(needs_every_shard=lambda own: False)
    run = SimpleNamespace(out=tmp_path, rank=0, world_size=1, engine=engine)
    with pytest.raises(CheckpointError, match=r"latest\.json: its config differs from the one in"):
        resume_from_checkpoint(run)


def test_every_rank_stops_when_the_ranks_see_different_checkpoints(tmp_path, monkeypatch) -> None:
    from types import SimpleNamespace

    from fastchgnet.train import collectives
    from fastchgnet.train.run import resume_from_checkpoint

    _save_ranks(tmp_path / "checkpoints", 2, _model())
    engine = SimpleNamespace(needs_every_shard=lambda own: False)
    run = SimpleNamespace(out=tmp_path, rank=0, world_size=2, engine=engine)
    # rank 1's view of the shared folder is stale: its latest.json names an older step
    stale = ("step-00000003", "", False)
    monkeypatch.setattr(collectives, "all_gather_objects", lambda s: [s, stale])
    with pytest.raises(CheckpointError, match="different checkpoints"):
        resume_from_checkpoint(run)


def test_deepspeed_reads_every_shard_only_for_elastic_zero_checkpoints() -> None:
    from types import SimpleNamespace

    from fastchgnet.train.engine import DeepSpeedEngine

    def payload(state):
        return {"engine": {"optimizer": state}}

    zero1 = SimpleNamespace(zero_stage=1)
    zero0 = SimpleNamespace(zero_stage=0)
    rigid = payload({"base_optimizer_state": {"state": {}}})
    elastic = payload({"base_optimizer_state": [{"state": {}}]})
    assert not DeepSpeedEngine.needs_every_shard(zero1, rigid)
    assert DeepSpeedEngine.needs_every_shard(zero1, elastic)
    assert not DeepSpeedEngine.needs_every_shard(zero0, payload({"state": {}}))


def test_every_rank_falls_back_together_when_one_cannot_read_the_newest(tmp_path, monkeypatch):
    import shutil
    from types import SimpleNamespace

    from fastchgnet.train import collectives
    from fastchgnet.train.run import resume_from_checkpoint

    newest = _save_ranks(tmp_path / "checkpoints", 2, _model())
    shutil.copytree(newest, newest.with_name("step-00000003"))  # an older, intact one
    engine = SimpleNamespace(needs_every_shard=lambda own: False)
    run = SimpleNamespace(out=tmp_path, rank=0, world_size=2, engine=engine)
    gathered = []

    class Stop(Exception):
        pass

    def gather(seen):  # rank 1 cannot read its file of the newest; both read the older one
        gathered.append(seen)
        if len(gathered) == 2:
            raise Stop
        return [seen, (seen[0], "rank 1: rank-00001.pt: checksum mismatch", True)]

    monkeypatch.setattr(collectives, "all_gather_objects", gather)
    with pytest.raises(Stop):
        resume_from_checkpoint(run)
    assert gathered == [("step-00000005", "", False), ("step-00000003", "", False)]


@pytest.mark.parametrize("pointer", ["damaged", "missing"])
def test_resume_with_damaged_latest_json_takes_the_newest_complete_checkpoint(
    tmp_path, capsys, pointer
) -> None:
    # every intact checkpoint was unusable: "latest.json: damaged, it names no checkpoint",
    # or without it "step-... without latest.json ...: not a complete checkpoint"
    from fastchgnet.train.checkpoint import latest_step, stored_config

    model = _model()
    for step in (10, 20):
        _save(tmp_path, step, model)
    newest = _save_ranks(tmp_path, 2, model)  # step 5 of 2 ranks: an older name, then torn
    newest.rename(tmp_path / "step-00000030")
    (tmp_path / "step-00000030" / "rank-00001.pt").unlink()  # a rank had not written it
    if pointer == "damaged":
        (tmp_path / "latest.json").write_text('{"name": "step-0000')
    else:
        (tmp_path / "latest.json").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000020"
    assert latest_step(tmp_path) == 20
    assert stored_config(tmp_path) == {"run": {"seed": 0}}
    err = capsys.readouterr().err.strip()
    assert err.endswith("step-00000020 is the newest complete checkpoint, taken in its place")
    assert err.count("\n") == 0  # said once


def test_resume_with_latest_json_naming_a_deleted_folder_takes_the_newest_complete_checkpoint(
    tmp_path, capsys
) -> None:
    # was: '<latest.json> names step-00000030, which is missing', step-20 and step-10 intact
    model = _model()
    for step in (10, 20, 30):
        _save(tmp_path, step, model)
    shutil.rmtree(tmp_path / "step-00000030")
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000020"
    err = capsys.readouterr().err.strip()
    assert "names step-00000030, which is missing: step-00000020 is the newest complete" in err


@pytest.mark.parametrize("torn", ["other position", "extra rank file"])
def test_a_step_folder_whose_rank_files_disagree_is_not_taken_without_latest_json(
    tmp_path, torn
) -> None:
    # a rank file of another step's position, or more rank files than ranks, is not a
    # checkpoint every rank finished together: no stand-in for a missing latest.json
    model = _model()
    _save(tmp_path, 3, model)
    folder = _save_ranks(tmp_path, 2, model, steps=[5, 6] if torn == "other position" else None)
    if torn == "extra rank file":
        shutil.copy(folder / "rank-00001.pt", folder / "rank-00002.pt")
    (tmp_path / "latest.json").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000003"
