"""Our model files: config + weights + a checksum, written atomically and verified on load."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fastchgnet.model.config import ModelConfig

if TYPE_CHECKING:
    from fastchgnet.model.chgnet import FastCHGNet

FORMAT = "fastchgnet-model"
FORMAT_VERSION = 1


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def save_model(model: FastCHGNet, path: str | Path) -> None:
    """Save ``model`` (config, weights, sha256 of the weights) to ``path`` atomically."""
    weights = _weights_bytes(model.state_dict())
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "weights": weights,
        "sha256": hashlib.sha256(weights).hexdigest(),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_model(
    cls: type[FastCHGNet], path: str | Path, map_location: str | torch.device = "cpu"
) -> FastCHGNet:
    """Load a model saved by ``save_model``; a damaged or foreign file is a clear error."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable fastchgnet model file ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastchgnet model file")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: model format {payload.get('format_version')} not supported")
    weights: bytes = payload["weights"]
    if hashlib.sha256(weights).hexdigest() != payload["sha256"]:
        raise ValueError(f"{path}: weights checksum mismatch; the file is damaged")
    model = cls(ModelConfig.from_dict(payload["config"]))
    state = torch.load(io.BytesIO(weights), map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model.to(map_location)
