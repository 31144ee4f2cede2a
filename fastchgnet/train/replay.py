"""Replay of a base data set when fine-tuning (``data.replay_source`` / ``replay_fraction``):
a seeded share of its frames joins the training split, tagged so that the split finds them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

import numpy as np

from fastchgnet.data.frame import Frame
from fastchgnet.data.split import material_unit_interval

#: frame-id prefix of the replayed base frames in a fine-tuning cache
REPLAY_TAG = "replay:"


def replay_sample(frames: Iterable[Frame], fraction: float, seed: int = 0) -> Iterator[Frame]:
    """About ``fraction`` of ``frames`` (each kept when a seeded hash of its frame id is
    below ``fraction``: the same frames every time), frame ids tagged ``REPLAY_TAG``."""
    for frame in frames:
        if material_unit_interval(frame.frame_id, seed) < fraction:
            yield replace(frame, frame_id=REPLAY_TAG + frame.frame_id)


def replayed_mask(frame_ids: np.ndarray) -> np.ndarray:
    """(n,) bool: which of a cache's ``frame_ids`` are replayed base frames."""
    return np.char.startswith(np.asarray(frame_ids).astype(str), REPLAY_TAG)
