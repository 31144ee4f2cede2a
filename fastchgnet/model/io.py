"""Our model files: config + weights, written atomically and checksummed by ``fastchgnet.files``
and verified on load."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fastchgnet.files import ChecksumError, read_checksummed, write_checksummed
from fastchgnet.model.config import ModelConfig

if TYPE_CHECKING:
    from fastchgnet.model.chgnet import FastCHGNet

FORMAT = "fastchgnet-model"
FORMAT_VERSION = 2


def save_model(model: FastCHGNet, path: str | Path) -> None:
    """Save ``model`` (its config and weights) to ``path``, atomically and checksummed."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"config": model.config.to_dict(), "weights": state}
    write_checksummed(path, payload, FORMAT, FORMAT_VERSION)


def load_model(
    cls: type[FastCHGNet], path: str | Path, map_location: str | torch.device = "cpu"
) -> FastCHGNet:
    """Load a model saved by ``save_model``; a damaged or foreign file is a ``ValueError``
    (``ChecksumError``) naming the file and the problem. The model comes in eval mode, as
    ``from_reference``'s: ready to predict; training calls ``train()`` itself."""
    try:
        _, payload = read_checksummed(path, FORMAT, (FORMAT_VERSION,))
    except ChecksumError as error:
        if str(error).endswith(f"not a {FORMAT} file"):  # readable, but someone else's
            raise ChecksumError(
                f"{error} (a chgnet checkpoint or as_dict file loads with "
                "fastchgnet.model.chgnet_files.load_model_file or compat CHGNet.from_file)"
            ) from None
        raise
    model = cls(ModelConfig.from_saved(payload["config"]))
    model.load_state_dict(payload["weights"])
    return model.to(map_location).eval()
