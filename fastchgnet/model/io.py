"""Our model files: config + weights, written atomically and checksummed by ``fastchgnet.files``
and verified on load."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fastchgnet.files import ChecksumError, read_checksummed, write_checksummed
from fastchgnet.model.config import ModelConfig
from fastchgnet.model.device import check_device

if TYPE_CHECKING:
    from fastchgnet.model.chgnet import FastCHGNet

FORMAT = "fastchgnet-model"
FORMAT_VERSION = 2
#: The format of training checkpoints (``fastchgnet.train.checkpoint.FORMAT``, a layer above).
TRAIN_CHECKPOINT_FORMAT = "fastchgnet-train-checkpoint"


def save_model(model: FastCHGNet, path: str | Path) -> None:
    """Save ``model`` (its config and weights, each in its dtype) to ``path``, atomically and
    checksummed. The run-time precision (``set_precision``) is not saved."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"config": model.config.to_dict(), "weights": state}
    write_checksummed(path, payload, FORMAT, FORMAT_VERSION)


def load_model(
    cls: type[FastCHGNet], path: str | Path, map_location: str | torch.device = "cpu"
) -> FastCHGNet:
    """Load a model saved by ``save_model``; a missing file is a FileNotFoundError, a damaged
    or foreign one a ``ValueError`` (``ChecksumError``), each naming the file and the
    problem; a ``map_location`` this torch cannot use, a one-line ValueError
    (``check_device``). The model comes in eval mode, as
    ``from_reference``'s: ready to predict; training calls ``train()`` itself. Its weights
    have their saved dtype (``load_weights``); its precision is "float32"."""
    device = check_device(map_location)  # before the file is read
    if Path(path).is_dir():
        raise IsADirectoryError(f"{path}: a folder, not a model file (a run folder's model.pt?)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        _, payload = read_checksummed(path, FORMAT, (FORMAT_VERSION,))
    except ChecksumError as error:
        if str(error).endswith(f"not a {FORMAT} file"):  # readable, but someone else's
            raise ChecksumError(f"{error} ({how_to_load(path)})") from None
        raise
    try:
        model = load_weights(cls(ModelConfig.from_saved(payload["config"])), payload["weights"])
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return model.to(device).eval()


def load_weights(model: FastCHGNet, weights: dict[str, torch.Tensor]) -> FastCHGNet:
    """``model`` cast to the dtype of ``weights`` (a state dict) and given them, bit for bit:
    a float64 model saved loads float64. Weights of several floating dtypes (none of our
    models) load into the model's own. Returns the model."""
    dtypes = {weight.dtype for weight in weights.values() if weight.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    check_weights_fit(model.state_dict(), weights)
    model.load_state_dict(weights)
    return model


def check_weights_fit(expected: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> None:
    """Raise ValueError (one line) where ``weights`` do not fit the state dict ``expected``
    of the architecture their file names: names missing or extra, or another shape (the
    first of each named), instead of load_state_dict's many-line RuntimeError."""
    missing = [name for name in expected if name not in weights]
    extra = [name for name in weights if name not in expected]
    shapes = [
        f"{name} {tuple(weights[name].shape)} where the architecture has {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in weights and weights[name].shape != tensor.shape
    ]
    problems = [
        f"{len(found)} {what} (first: {found[0]})"
        for found, what in (
            (missing, "missing"),
            (extra, "not in the architecture"),
            (shapes, "of another shape"),
        )
        if found
    ]
    if problems:
        raise ValueError(
            "the weights do not fit the architecture their file names: " + "; ".join(problems)
        )


def file_format(path: str | Path) -> str | None:
    """The ``format`` a checksummed file of ours declares ("fastchgnet-model",
    "fastchgnet-train-checkpoint"), or None for any other or unreadable file. Reads only the
    wrapper (``weights_only=True``)."""
    return _format_of(_wrapper(path))


def _wrapper(path: str | Path) -> object:
    """What ``path`` holds, read with ``weights_only=True`` (None: unreadable, or holding
    pickled objects: not one of ours)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None


def _format_of(wrapper: object) -> str | None:
    kind = wrapper.get("format") if isinstance(wrapper, dict) else None
    return kind if isinstance(kind, str) else None


def is_state_dict(payload: object) -> bool:
    """Whether ``payload`` is a state dict alone: tensors by parameter name, without the
    settings (architecture, cutoffs) a model is built from."""
    return (
        isinstance(payload, dict)
        and bool(payload)
        and all(isinstance(value, torch.Tensor) for value in payload.values())
    )


def how_to_load(path: str | Path) -> str:
    """What a readable file that is not our model file may be, and what reads it."""
    payload = _wrapper(path)  # read once for both questions
    if _format_of(payload) == TRAIN_CHECKPOINT_FORMAT:
        return (
            "it is a fastchgnet training checkpoint: `fastchgnet predict --model` and the "
            "training config's model.init read it, or use its run folder's model.pt"
        )
    if is_state_dict(payload):
        return (
            f"it is a state dict ({len(payload)} tensors, no model settings): load it into "
            "the model it came from (model.load_state_dict) and save that model"
        )
    return (
        "a chgnet checkpoint or as_dict file loads with "
        "fastchgnet.model.chgnet_files.load_model_file or compat CHGNet.from_file"
    )
