"""Model files users already have: chgnet's checkpoints and dicts, read without running code.

Every file is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and plain
containers only, so a file from the internet cannot run code when loaded. The checkpoints that
chgnet 0.2.0, 0.3.0 and 0.4.x write (``Trainer.save``/``save_checkpoint``: ``{"model":
{"model_args", "state_dict"}, "optimizer", "scheduler", "training_history", "trainer_args"}``;
the packaged pretrained files; ``torch.save(CHGNet.as_dict())``) need nothing more, so no class
is added to torch's allow-list (``torch.serialization.add_safe_globals`` is not called).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fastchgnet.model.config import ModelConfig
from fastchgnet.model.io import FORMAT, is_state_dict, load_model
from fastchgnet.model.reference import (
    check_reference_modes,
    checkpoint_path,
    model_from_reference_dict,
)

if TYPE_CHECKING:
    from fastchgnet.model.chgnet import FastCHGNet


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The dict stored in a model file, read with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: naming the file: it holds pickled objects other than tensors and plain
            containers (refused, nothing of it runs), it is corrupt or truncated, or it does
            not hold a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    with path.open("rb") as handle:
        start = handle.read(64)
    if not start.startswith(TORCH_FILE_STARTS):
        raise ValueError(f"{path}: not a model file: not a torch file ({_begins_with(start)})")
    stand_ins: list[str] = []  # module classes read as ``Inert`` (see ``INERT_PREFIXES``)
    while True:
        try:
            inert = [(_inert_class(name), name) for name in stand_ins]
            with torch.serialization.safe_globals(inert):
                payload = torch.load(path, map_location="cpu", weights_only=True)
            break
        except pickle.UnpicklingError as exc:
            text = str(exc)
            found = re.search(r"GLOBAL ([\w.]+)", text)
            name = found.group(1) if found else ""
            if name.startswith(INERT_PREFIXES) and name not in stand_ins and len(stand_ins) < 16:
                stand_ins.append(name)
                continue
            detail = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            detail = re.sub(r"\x1b\[[0-9;]*m", "", detail)  # torch's terminal colours
            raise ValueError(
                f"{path}: refused: it holds pickled Python objects beyond tensors and plain "
                f"containers, which could run code when loaded ({detail})"
            ) from None
        except Exception as exc:  # zip, EOF and format errors of a damaged file
            problem = f"corrupt or truncated: {exc}"
            raise ValueError(f"{path}: not a readable model file ({problem})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a model file (it holds a {type(payload).__name__})")
    for where, found in _inert_parts(payload, ()):
        if where not in ATOMREF_PLACES or found.pickled_as != ATOMREF:
            raise ValueError(
                f"{path}: refused: it holds a pickled {found.pickled_as} at "
                f"{'/'.join(where) or 'the top'} (only tensors, plain containers and a chgnet "
                "AtomRef given as composition_model are read)"
            )
    return payload


#: how a file of ``torch.save`` begins: a zip archive (torch 1.6 and later) or a pickle
TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")


def _begins_with(start: bytes) -> str:
    """What the first bytes of a file look like: text (its first line) or other bytes."""
    try:
        line = (start.decode("utf-8").strip().splitlines() or [""])[0]
    except UnicodeDecodeError:
        return f"it begins with the bytes {start[:8].hex(' ')}"
    return f"it is text, beginning {line[:40]!r}" if line else "it is empty or blank"


def check_not_state_dict(payload: dict[str, Any], source: str) -> None:
    """Raise ValueError naming ``source`` when ``payload`` is a state dict alone (tensors by
    parameter name, without the model's settings: no architecture or cutoffs to build)."""
    if is_state_dict(payload):
        raise ValueError(
            f"{source}: a state dict ({len(payload)} tensors, no model settings): give it to "
            "the model it came from (model.load_state_dict(torch.load(path))) and save that "
            "model (FastCHGNet.save; chgnet: torch.save(model.as_dict(), path))"
        )


#: The one pickled object a chgnet checkpoint may hold: a CHGNet made with
#: ``composition_model=AtomRef(...)`` keeps that module in its ``model_args``
ATOMREF = "chgnet.model.composition_model.AtomRef"
ATOMREF_PLACES = {("model", "model_args", "composition_model"), ("model_args", "composition_model")}


def _inert_parts(value: object, where: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(key path, stand-in) of every ``Inert`` object or class within ``value``."""
    if isinstance(value, Inert) or (isinstance(value, type) and issubclass(value, Inert)):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _inert_parts(item, (*where, str(key)))
    elif isinstance(value, (list, tuple, set)):
        for index, item in enumerate(value):
            yield from _inert_parts(item, (*where, str(index)))


#: Pickled classes a chgnet checkpoint may hold beside its state dict, read as ``Inert``: a
#: ``Trainer`` file of a CHGNet made with ``composition_model=AtomRef(...)`` pickles that
#: module (and its Linear, its numpy arrays) into ``model_args``; its weights are in the state
#: dict, which is what is loaded
INERT_PREFIXES = ("chgnet.", "torch.nn.modules.", "numpy.")


class Inert:
    """A pickled object read without running any of its code: its arguments and state are
    dropped (``model_from_reference_dict`` reads the weights from the state dict);
    ``pickled_as`` names the class it stands in for (``_inert_class``)."""

    pickled_as = ""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


def reference_model_dict(payload: dict[str, Any], source: str) -> dict[str, Any]:
    """The ``{"model_args", "state_dict"}`` part of a chgnet checkpoint or ``as_dict`` dict.

    Raises:
        ValueError: naming ``source`` when ``payload`` is neither.
    """
    inner = payload.get("model")
    found = None
    if isinstance(inner, dict) and "state_dict" in inner:
        found = inner
    elif "state_dict" in payload and "model_args" in payload:
        found = payload
    if found is not None:
        args = found.get("model_args")
        if isinstance(args, dict) and isinstance(args.get("composition_model"), Inert):
            # an AtomRef given as composition_model (``read_checkpoint`` lets no other
            # stand-in through): its weights are in the state dict
            found = {**found, "model_args": {**args, "composition_model": None}}
        return found
    keys = sorted(map(str, payload))[:8]
    raise ValueError(
        f"{source}: not a CHGNet checkpoint (top-level keys {keys}); expected a chgnet Trainer "
        "file with model = {model_args, state_dict}, a CHGNet.as_dict() dict or a fastchgnet "
        "model file"
    )


def load_model_file(cls: type[FastCHGNet], path: str | Path, **modes: Any) -> FastCHGNet:
    """A model from any file users have: ours (``FastCHGNet.save``), a chgnet checkpoint
    (``Trainer`` epoch/best files, the packaged pretrained files of 0.2.0/0.3.0/r2scan) or a
    ``torch.save``'d ``CHGNet.as_dict()``; chgnet's cutoffs and AtomRef energies are kept.

    Raises:
        ValueError: naming the file: unsafe, corrupt, or not a CHGNet of this architecture.
    """
    return model_from_checkpoint(cls, read_checkpoint(path), path, **modes)


def model_from_checkpoint(
    cls: type[FastCHGNet], payload: dict[str, Any], path: str | Path, **modes: Any
) -> FastCHGNet:
    """``load_model_file`` of a file already read (``read_checkpoint``'s ``payload`` of the
    file at ``path``): ours is loaded with its checksum verified, chgnet's from ``payload``.

    Raises:
        ValueError: naming the file: a state dict alone, or not a CHGNet of this architecture.
    """
    if payload.get("format") == FORMAT:
        return load_model(cls, path)
    check_not_state_dict(payload, str(path))
    model_dict = reference_model_dict(payload, str(path))
    return model_from_reference_dict(cls, model_dict, str(path), **modes)


def load_reference(cls: type[FastCHGNet], version: str, **modes: Any) -> FastCHGNet:
    """Build a FastCHGNet with the reference ``version``'s pretrained weights.

    ``modes`` may restate the reference's settings; anything else raises ValueError (see
    ``check_reference_modes``), before the checkpoint is read.
    """
    trained_for = {"forces": "conservative", "coupled_updates": True}
    if any(modes.get(k, v) != v for k, v in trained_for.items()):  # before reading the file
        check_reference_modes(version, ModelConfig(), modes)
    path = checkpoint_path(version)
    payload = read_checkpoint(path)
    return model_from_reference_dict(cls, payload["model"], version, **modes)


def _inert_class(name: str) -> type[Inert]:
    """An ``Inert`` subclass standing in for the pickled class or function ``name``."""
    return type("Inert", (Inert,), {"pickled_as": name})
