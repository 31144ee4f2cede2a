"""Training checkpoints: atomic, checksummed, one file per rank, committed by ``latest.json``.

Layout under ``<out_dir>/checkpoints``::

    step-00000120/rank-00000.pt   model weights and config, optimiser (this rank's shard under
                                  ZeRO 1), scheduler, progress (epoch, step in epoch, global
                                  step, bad steps in a row), RNG states, TrainConfig, history,
                                  training options' state (EMA weights, best score), what
                                  the cache was built from (checked by a resume)
    step-00000120/rank-00001.pt   optimiser shard, scheduler and RNG states of rank 1
    latest.json                   names the newest complete checkpoint; written last

Every file goes through a temp file, fsync and rename; it wraps its payload's bytes with their
sha256, checked on load. ``latest.json`` is replaced only after every rank has written its file
(a barrier), so a run killed at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastchgnet.files import ChecksumError, atomic_write_bytes, read_checksummed, write_checksummed

FORMAT = "fastchgnet-train-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ChecksumError):
    """A checkpoint is missing, damaged or foreign."""


@dataclass
class Progress:
    """Where training stands: ``epoch`` (0-based), ``step_in_epoch`` global steps done in it,
    ``global_step`` optimiser steps done in all, ``bad_steps`` non-finite losses in a row; and
    the running totals a resume continues: ``epoch_loss`` (the epoch's read windows' mean
    loss times their finite steps, summed), ``epoch_finite`` and ``epoch_skipped`` (its
    steps so far), ``structures`` trained on in all (every rank's) and ``train_seconds``."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    bad_steps: int = 0
    epoch_loss: float = 0.0
    epoch_finite: int = 0
    epoch_skipped: int = 0
    structures: int = 0
    train_seconds: float = 0.0


#: the fields of ``Progress`` every checkpoint has (the totals came later)
POSITION = ("epoch", "step_in_epoch", "global_step", "bad_steps")


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU, and this rank's CUDA device when present) generator
    states. Only the rank's own device: a resume on nodes that show fewer GPUs (one a rank)
    restores it all the same."""
    # the legacy global generator: third-party code may draw from it
    name, keys, position, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    state = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device: the rank's
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    keys = np.array(keys, dtype=np.uint32)
    np.random.set_state((name, keys, position, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, list):  # written before stop 41: every visible device's
            cuda = cuda[torch.cuda.current_device()]
        torch.cuda.set_rng_state(cuda)


def write_verified(path: Path, payload: dict[str, Any]) -> None:
    """Write one rank's checkpoint file (atomic, checksummed: ``fastchgnet.files``)."""
    write_checksummed(path, payload, FORMAT, FORMAT_VERSION)


def read_verified(path: Path) -> dict[str, Any]:
    """Read a file of ``write_verified``; a damaged or foreign file raises CheckpointError.
    A ZeRO optimiser shard holds three small DeepSpeed classes: exactly those are allowed."""
    from fastchgnet.train.engine import deepspeed_safe_globals

    try:
        return read_checksummed(path, FORMAT, (FORMAT_VERSION,), deepspeed_safe_globals)[1]
    except ChecksumError as error:
        raise CheckpointError(str(error)) from error


def rank_file(folder: Path, rank: int) -> Path:
    return folder / f"rank-{rank:05d}.pt"


def save_checkpoint(
    root: Path,
    *,
    rank: int,
    world_size: int,
    progress: Progress,
    engine_state: dict[str, Any],
    model: torch.nn.Module | None,
    config: dict[str, Any],
    history: list[dict[str, Any]],
    barrier: Any = None,
    keep: int = 3,
    options: dict[str, Any] | None = None,
    data_origin: dict[str, Any] | None = None,
) -> Path:
    """Write this rank's file of the checkpoint at ``progress.global_step``; the main rank
    commits it in ``latest.json`` after ``barrier()`` (all ranks written) and prunes to ``keep``.

    ``model`` (the main rank's) carries weights and its ModelConfig; other ranks pass None.
    ``options``: the training options' state (EMA, best score; ``TrainingOptions.state_dict``),
    kept in the main rank's file beside the weights. ``data_origin``: what the run's cache was
    built from (``data.origin.cache_origin``), which a resume checks its data against.
    """
    folder = root / f"step-{progress.global_step:08d}"
    payload: dict[str, Any] = {
        "engine": engine_state,
        "rng": rng_state(),
        "progress": vars(progress).copy(),
        "world_size": world_size,
    }
    if rank == 0 and model is not None:
        payload["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        payload["model_config"] = model.config.to_dict()
        payload["config"] = config
        payload["history"] = history
        payload["options"] = options
        payload["data_origin"] = data_origin
    write_verified(rank_file(folder, rank), payload)
    if barrier is not None:
        barrier()
    if rank == 0:
        atomic_write_bytes(
            root / "latest.json",
            json.dumps(
                {
                    "name": folder.name,
                    **vars(progress),
                    "world_size": world_size,
                    "config": config,
                    "data_origin": data_origin,
                }
            ).encode(),
        )
        folders = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in folders[: max(0, len(folders) - keep)]:
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(root: Path) -> Path | None:
    """The folder ``latest.json`` names, or None when there is no checkpoint."""
    pointer = _pointer(root)
    return None if pointer is None else pointer[0]


def latest_progress(root: Path) -> Progress | None:
    """Where the newest checkpoint under ``root`` stands (from ``latest.json``), or None when
    there is none or the pointer is damaged (for messages and checks before a resume, which
    verifies it fully)."""
    try:
        pointer = _pointer(root)
        if pointer is None:
            return None
        stored = pointer[1]
        totals = {k: type(v)(stored[k]) for k, v in vars(Progress()).items() if k in stored}
        return Progress(**{**totals, **{k: int(stored[k]) for k in POSITION}})
    except (CheckpointError, OSError, KeyError, TypeError, ValueError):
        return None


def latest_step(root: Path) -> int | None:
    """The global step of the newest checkpoint under ``root`` (None: see ``latest_progress``)."""
    progress = latest_progress(root)
    return None if progress is None else progress.global_step


def stored_config(root: Path) -> dict[str, Any] | None:
    """The training config (``TrainConfig.to_dict()``) of the newest checkpoint under
    ``root``, or None when there is none: from ``latest.json``, so a resume reads rank 0's
    file once (a pointer written before it held the config sends us to that file)."""
    pointer = _pointer(root)
    if pointer is None:
        return None
    folder, fields = pointer
    if "config" in fields:
        return fields["config"]
    return read_verified(rank_file(folder, 0))["config"]


def stored_data_origin(root: Path) -> dict[str, Any] | None:
    """What the newest checkpoint's run trained on (``save_checkpoint``'s ``data_origin``,
    from ``latest.json``; ``load_latest`` checks it against rank 0's file), or None where
    there is no checkpoint or it keeps no record (one written before records were kept)."""
    pointer = _pointer(root)
    return None if pointer is None else pointer[1].get("data_origin")


def load_latest(
    root: Path,
    rank: int,
    world_size: int,
    every_rank: Callable[[dict], bool] | None = None,
    folder: Path | None = None,
) -> tuple[Path, dict, list[dict | None]] | None:
    """The newest checkpoint under ``root``: (its folder, then ``load_checkpoint``'s main
    payload and payloads by rank), or None when there is none. ``latest.json`` is read once,
    and the config it holds (what a resume's command line started from, ``stored_config``)
    is checked against rank 0's checksummed copy, so it is verified on load as the weights
    are. With ``folder`` (an older one, ``older_checkpoints``), that checkpoint instead.

    Raises CheckpointError as ``load_checkpoint``, and when the two configs differ.
    """
    if folder is not None:
        return (folder, *load_checkpoint(folder, rank, world_size, every_rank))
    pointer = _pointer(root)
    if pointer is None:
        return None
    folder, fields = pointer
    main, payloads = load_checkpoint(folder, rank, world_size, every_rank)
    for key in ("config", "data_origin"):
        if fields.get(key, main.get(key)) != main.get(key):
            raise CheckpointError(
                f"{root / 'latest.json'}: its {key} differs from the one in "
                f"{rank_file(folder, 0)} (the file was changed after it was written)"
            )
    return folder, main, payloads


def older_checkpoints(root: Path) -> list[Path]:
    """The checkpoint folders under ``root`` older than the one ``latest.json`` names (every
    one where the pointer itself is damaged or names a missing folder), newest first: where a
    resume falls back to when the newest cannot be read. Empty without ``latest.json`` (folders
    without a commit may be part-written)."""
    if not (root / "latest.json").is_file():
        return []
    try:
        pointer = _pointer(root)
        newest = pointer[0].name if pointer is not None else None
    except CheckpointError:
        newest = None
    folders = sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)
    return [p for p in folders if newest is None or p.name < newest]


def _pointer(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """(the folder ``latest.json`` names, its fields), read once, or None without a
    checkpoint. Where ``latest.json`` is missing or damaged, or names a missing folder, the
    newest complete checkpoint (``_newest_complete``) stands in for it, said once on stderr."""
    path = root / "latest.json"
    try:
        fields = json.loads(path.read_text())
        folder = root / fields["name"]
    except FileNotFoundError:
        return _newest_complete(root, f"{path} is missing")
    except (ValueError, KeyError, TypeError) as error:  # torn by hand, or not ours
        problem = f"{path}: damaged, it names no checkpoint ({type(error).__name__}: {error})"
        return _newest_complete(root, problem, required=True)
    if not folder.is_dir():  # deleted by hand: the folders before it may be intact
        return _newest_complete(root, f"{path} names {folder.name}, which is missing", True)
    return folder, fields


#: the checkpoints ``_newest_complete`` found, by root and folders: each is verified once
_RECOVERED: dict[tuple[str, tuple[str, ...]], tuple[Path, dict[str, Any]] | None] = {}


def _newest_complete(
    root: Path, problem: str, required: bool = False
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint folder under ``root`` whose every rank's file is there and
    verifies (a folder some rank had not written when the run died is not complete), as
    ``_pointer`` gives it, with a line on stderr naming ``problem``; None where there is
    none (with ``required``: CheckpointError naming ``problem``)."""
    folders = sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)
    key = (str(root), tuple(p.name for p in folders))
    if key not in _RECOVERED:
        _RECOVERED[key] = next(filter(None, map(_complete, folders)), None)
        from fastchgnet.train.launchers import launcher_rank_and_world

        if _RECOVERED[key] is not None and launcher_rank_and_world()[0] == 0:  # said once
            name = _RECOVERED[key][0].name
            print(f"fastchgnet: {problem}: {name} is the newest complete checkpoint, taken "
                  "in its place", file=sys.stderr)  # fmt: skip
    if _RECOVERED[key] is None and required:
        raise CheckpointError(f"{problem}, and no complete checkpoint is under {root}")
    return _RECOVERED[key]


def _complete(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """(``folder``, the fields ``latest.json`` would give it) where every rank's file is
    there and verifies, the files are as many as the ranks that wrote them and every one
    records rank 0's position (``POSITION``), else None."""
    try:  # every rank's file read and checked as a resume of them all reads them
        world_size = len(list(folder.glob("rank-*.pt")))
        main, _ = load_checkpoint(folder, 0, world_size, every_rank=lambda _: True)
        fields = {"name": folder.name, **main["progress"], "world_size": main["world_size"]}
        return folder, {**fields, "config": main["config"], "data_origin": main.get("data_origin")}
    except (CheckpointError, OSError, KeyError, TypeError, ValueError):
        return None


def load_checkpoint(
    folder: Path,
    rank: int,
    world_size: int,
    every_rank: Callable[[dict], bool] | None = None,
) -> tuple[dict, list[dict | None]]:
    """(main payload with model/config, the payloads by rank) of a checkpoint folder.

    A rank reads rank 0's file (weights, config, history) and its own: two files, not one per
    rank, so a resume of N ranks reads 2N files instead of N^2. Where ``every_rank(own
    payload)`` says so it reads them all (DeepSpeed rebuilds elastic ZeRO shards from every
    rank's); the ranks not read are None in the list.

    Raises CheckpointError when the world size differs from the one that wrote it (the sampler
    plan and ZeRO shards depend on it), a file is missing or damaged, or a file read records
    another position (``POSITION``: epoch, steps) than rank 0's; the loss totals and seconds
    of ``Progress`` are each rank's own.
    """
    main = read_verified(rank_file(folder, 0))
    if main["world_size"] != world_size:
        raise CheckpointError(
            f"{folder} was written by {main['world_size']} rank(s); resume with the same number"
        )
    payloads: list[dict | None] = [None] * world_size
    payloads[0] = main
    payloads[rank] = main if rank == 0 else read_verified(rank_file(folder, rank))
    if every_rank is not None and every_rank(payloads[rank]):
        for r in range(world_size):
            if payloads[r] is None:
                payloads[r] = read_verified(rank_file(folder, r))
    position = {key: main["progress"][key] for key in POSITION}
    for r, payload in enumerate(payloads):  # the loss totals and seconds are each rank's own
        theirs = None if payload is None else {key: payload["progress"][key] for key in POSITION}
        if theirs is not None and theirs != position:
            raise CheckpointError(
                f"{rank_file(folder, r)}: records another position than rank 0's "
                f"({theirs} against {position})"
            )
    return main, payloads
