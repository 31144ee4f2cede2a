"""Fine-tuning: start from the pretrained CHGNet 0.3.0, freeze named parts, train on frames."""

from __future__ import annotations

import pytest
import torch

from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.train.config import TrainConfig, apply_overrides
from fastchgnet.train.run import train
from tests.train.helpers import small_cache


@pytest.mark.slow
def test_finetuning_trains_unfrozen_parts_and_keeps_frozen_ones(tmp_path) -> None:
    pytest.importorskip("chgnet")
    cache = small_cache(tmp_path / "cache", n=16)
    config = apply_overrides(
        TrainConfig(),
        [
            f"data.source={cache}",
            "data.batch_size=4",
            "data.split=[0.75,0.125,0.125]",
            "model.init=reference:0.3.0",
            "model.architecture={}",
            'model.freeze=["atom_embedding", "atom_convs.0"]',
            f"run.out_dir={tmp_path / 'run'}",
            "run.max_steps=2",
            "run.progress=lines",
            "run.plots=false",
            "optim.lr=1e-3",
        ],
    )
    train(config)
    before = FastCHGNet.from_reference("0.3.0").state_dict()
    from fastchgnet.train.model_setup import load_from_path

    after = load_from_path(tmp_path / "run").state_dict()
    for name in before:
        same = torch.equal(before[name], after[name])
        if name.startswith(("atom_embedding.", "atom_convs.0.", "composition.")):
            assert same, f"{name} is frozen but changed"
    assert not torch.equal(
        before["energy_readout.mlp.0.weight"], after["energy_readout.mlp.0.weight"]
    )


def test_the_report_refuses_a_multi_process_launch_in_one_line(monkeypatch, capsys) -> None:
    """Under a launcher every rank would convert, evaluate and report, and read model.pt while
    rank 0 writes it: the report names the multi-GPU route instead, before doing any work."""
    from fastchgnet.cli.finetune import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["--config", "configs/finetune.toml"]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert "deepspeed launcher/train.py --config configs/finetune.toml" in message


def test_the_heldout_evaluation_loads_its_batches_for_the_device_it_runs_on(
    tmp_path, monkeypatch
) -> None:
    # its loader was made for the CPU whatever the device: on a GPU its batches came
    # unpinned, so the evaluation's copies to the device waited instead of overlapping
    import numpy as np

    from fastchgnet.train import finetune, loop
    from fastchgnet.train import run as run_module
    from fastchgnet.train.loading import make_splits

    cache = small_cache(tmp_path / "cache", n=8)
    config = apply_overrides(TrainConfig(), [f"data.source={cache}", "data.batch_size=4"])
    splits = make_splits(cache, config.data)
    made, evaluated = [], []
    real_make_loader = finetune.make_loader

    def make_loader(*args, **kwargs):
        made.append(torch.device(kwargs.get("device", "cpu")))
        return real_make_loader(*args, **kwargs)

    class Results:
        def results(self) -> dict:
            return {}

    def evaluate(model, batches, device):
        evaluated.append(torch.device(device))
        return Results()

    monkeypatch.setattr(finetune, "make_loader", make_loader)
    monkeypatch.setattr(loop, "evaluate", evaluate)
    monkeypatch.setattr(run_module, "device_type", lambda: "meta")  # a device that is not the CPU
    indices = np.arange(len(splits.dataset), dtype=np.int64)
    finetune.evaluate_indices(torch.nn.Linear(2, 2), splits, indices, config)
    assert made == evaluated == [torch.device("meta")]
