"""Stopping a long data job cleanly: its frames closed when it ends, so that ``finally`` blocks
(a reader's temporary files, a half-built shard) run at once, also when a signal stops it
(``fastchgnet.signals``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator


@contextlib.contextmanager
def closing(frames: Iterable[object]) -> Iterator[None]:
    """Call ``frames.close()`` (where it has one: a generator, ``sources.SourceFrames``) when
    the block ends, normally or not, so the reader's ``finally`` blocks run at once."""
    try:
        yield
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()
