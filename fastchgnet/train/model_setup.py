"""The model a run trains: new, pretrained (reference weights) or ours; frozen parts; AtomRef."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import torch

from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.model.config import ModelConfig
from fastchgnet.train.checkpoint import latest_checkpoint, rank_file, read_verified
from fastchgnet.train.config import ModelSection

REFERENCE_PREFIX = "reference:"


def load_from_path(path: Path, weights: Literal["ema", "raw"] = "ema") -> FastCHGNet:
    """Our model file (``FastCHGNet.save``), a training checkpoint file or step folder, or a
    run folder (its newest checkpoint). A checkpoint of a run with EMA on gives the EMA
    weights (those its validation and model.pt use; said on stderr) unless ``weights="raw"``
    asks for the trained ones; a model file holds one set of weights, given as they are."""
    if path.is_dir():
        folder = (
            latest_checkpoint(path / "checkpoints") if (path / "checkpoints").is_dir() else path
        )
        if folder is None:
            raise FileNotFoundError(f"{path}: no checkpoint in it")
        path = rank_file(folder, 0)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model or checkpoint file")
    try:
        return FastCHGNet.load(path)
    except ValueError:
        payload = read_verified(path)
    model = FastCHGNet(ModelConfig.from_saved(payload["model_config"]))
    ema = (payload.get("options") or {}).get("ema")
    if ema is None or weights == "raw":
        model.load_state_dict(payload["model"])
        return model
    model.load_state_dict(ema["shadow"])
    from fastchgnet.train.launchers import launcher_rank_and_world

    if launcher_rank_and_world()[0] == 0:  # model.init= under a launcher: said once
        print(
            f"fastchgnet: {path}: the EMA weights (optim.ema_decay={ema['decay']}, after "
            f"{ema['updates']} steps), as the run's validation used",
            file=sys.stderr,
        )
    return model


def build_model(section: ModelSection, seed: int) -> FastCHGNet:
    """The model ``section.init`` names, with ``section.freeze`` applied. A new model's
    weights are a function of ``seed`` only (the same on every rank)."""
    if section.init != "scratch" and section.architecture:
        raise ValueError(
            f"model.architecture applies to init='scratch' only (init={section.init!r} brings its "
            "own): add --set 'model.architecture={}' (or model.architecture = {} in the config)"
        )
    if section.init == "scratch":
        torch.manual_seed(seed)
        model = FastCHGNet(ModelConfig.from_dict(section.architecture))
    elif section.init.startswith(REFERENCE_PREFIX):
        model = FastCHGNet.from_reference(section.init.removeprefix(REFERENCE_PREFIX))
    else:
        model = load_from_path(Path(section.init))
    freeze(model, section.freeze)
    return model


def freeze(model: torch.nn.Module, prefixes: tuple[str, ...] | list[str]) -> list[str]:
    """Stop training parameters whose name is a prefix or starts with ``prefix.``; returns the
    frozen names. A prefix that matches nothing is an error (a typo would freeze nothing)."""
    frozen = []
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            top = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"freeze: {prefix!r} matches no parameter; top-level parts: {top}")
        frozen += hits
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return frozen


def should_fit_composition(section: ModelSection) -> bool:
    """``fit_composition`` "yes"/"no", or "auto": only for a new model."""
    if section.fit_composition == "auto":
        return section.init == "scratch"
    return section.fit_composition == "yes"
