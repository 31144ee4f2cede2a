"""Deterministic train / validation / test splits: by material id (the default), or by frame
position within each material (``split_by_frame_tail``: one trajectory's last frames held out).

Each material id is hashed with the seed (blake2b, stable across Python runs, machines and
processes, unlike ``hash``) to a number u in [0, 1); u below ``train`` goes to train, below
``train + val`` to val, the rest to test. All frames of one material therefore land in one split,
and a material keeps its split when other materials are added or removed. The fractions are
met in expectation (each material is an independent draw), not exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from fastchgnet.data.sources import Frame

SPLIT_NAMES = ("train", "val", "test")


class Split(NamedTuple):
    """Indices (into the frame list) of each split, int64 arrays in ascending order."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def material_unit_interval(material_id: str, seed: int = 0) -> float:
    """Stable pseudo-random number in [0, 1) for a material id and seed."""
    digest = hashlib.blake2b(f"{seed}\x00{material_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions):
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    total = float(sum(fractions))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions} (sum {total})")
    train, val, test = (float(f) for f in fractions)
    return train, val, test


def assign_split(
    material_id: str, fractions: Sequence[float] = (0.9, 0.05, 0.05), seed: int = 0
) -> str:
    """The split (``"train"``, ``"val"`` or ``"test"``) of one material."""
    train, val, _ = _check_fractions(fractions)
    u = material_unit_interval(material_id, seed)
    return "train" if u < train else "val" if u < train + val else "test"


def split_by_material(
    material_ids: Sequence[str], fractions: Sequence[float] = (0.9, 0.05, 0.05), seed: int = 0
) -> Split:
    """Split frames by their material ids.

    Args:
        material_ids: (n_frames,) material id of every frame.
        fractions: expected (train, val, test) fractions of materials; sum to 1.
        seed: changes the assignment of every material.

    Returns:
        ``Split`` of frame indices; every frame index appears in exactly one split.
    """
    train, val, _ = _check_fractions(fractions)
    unique, inverse = np.unique(np.asarray(material_ids, dtype=str), return_inverse=True)
    u = np.array([material_unit_interval(str(m), seed) for m in unique], dtype=np.float64)
    which = np.where(u < train, 0, np.where(u < train + val, 1, 2))[inverse.reshape(-1)]
    return Split(*(np.flatnonzero(which == k).astype(np.int64) for k in range(3)))


def split_tag(split: str, frame_id: str) -> str:
    """``frame_id`` tagged with its explicit split (``"val:run-3"``), see ``split_by_tag``."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"split {split!r}: use one of {SPLIT_NAMES}")
    return f"{split}:{frame_id}"


def split_by_tag(frame_ids: Sequence[str]) -> Split:
    """Split frames by the explicit tag their ids carry (``split_tag``: written when train,
    validation and test frames come from separate files).

    Raises:
        ValueError: naming the first frame id without a train/val/test tag.
    """
    tags = [str(frame_id).split(":", 1)[0] for frame_id in frame_ids]
    for frame_id, tag in zip(frame_ids, tags, strict=True):
        if tag not in SPLIT_NAMES:
            raise ValueError(
                f"frame {frame_id!r} has no split tag (train:, val: or test:); the cache was "
                "not built from explicit split files: use fraction splits (data.split) instead"
            )
    which = np.array([SPLIT_NAMES.index(tag) for tag in tags], dtype=np.int64)
    return Split(*(np.flatnonzero(which == k).astype(np.int64) for k in range(3)))


def split_by_frame_tail(
    material_ids: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1)
) -> Split:
    """Split every material's frames by position, keeping their order: of a material's n
    frames (in source order, e.g. the ionic steps of one relaxation), the first
    round(train * n) go to train, up to round((train + val) * n) to val, the rest (the tail)
    to test. Held-out frames are a contiguous tail because neighbouring frames of one
    trajectory are near-duplicates: a random pick would leak them into training.

    Args:
        material_ids: (n_frames,) material id of every frame, frames in source order.
        fractions: (train, val, test) fractions of each material's frames; sum to 1.

    Returns:
        ``Split`` of frame indices; every frame index appears in exactly one split.
    """
    train, val, _ = _check_fractions(fractions)
    ids = np.asarray(material_ids, dtype=str)
    if ids.size == 0:
        return Split(*(np.zeros(0, dtype=np.int64) for _ in range(3)))
    _, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse)
    order = np.argsort(inverse, kind="stable")  # frames grouped by material, source order kept
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.empty(len(ids), dtype=np.int64)
    position[order] = np.arange(len(ids)) - starts[inverse[order]]
    n = counts[inverse]
    train_end = np.round(train * n).astype(np.int64)  # numpy rounds halves to even
    val_end = np.round((train + val) * n).astype(np.int64)
    which = np.where(position < train_end, 0, np.where(position < val_end, 1, 2))
    return Split(*(np.flatnonzero(which == k).astype(np.int64) for k in range(3)))


def tag_split(frames: Iterable[Frame], split: str) -> Iterator[Frame]:
    """``frames`` with ids tagged as members of ``split`` ("train", "val" or "test"), for
    caches built from explicit split files (``split_by_tag`` reads the tags)."""
    from dataclasses import replace

    for frame in frames:
        yield replace(frame, frame_id=split_tag(split, frame.frame_id))
