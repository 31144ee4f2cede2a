"""Stopping a long data job cleanly: its frames closed and SIGTERM turned into SystemExit, so
that ``finally`` blocks (a reader's temporary files, a half-built shard) run when it is stopped."""

from __future__ import annotations

import contextlib
import signal
import threading
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


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Within the block SIGTERM raises SystemExit(143), so ``finally`` blocks run (temporary
    files removed); only in the main thread and where SIGTERM had no handler (a launcher's own
    handler is left alone)."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def stop_code(stop: BaseException) -> int | None:
    """The exit code of a stop by signal: 130 for KeyboardInterrupt, 143 for the SystemExit a
    SIGTERM handler raises (``sigterm_as_exit``); None for any other."""
    if isinstance(stop, KeyboardInterrupt):
        return 130
    if isinstance(stop, SystemExit) and stop.code in (130, 143):
        return int(stop.code)
    return None


def quiet_worker() -> None:
    """A conversion worker's start: SIGINT ignored (Ctrl-C reaches the whole process group;
    the main process stops the pool, with one message, not a traceback per worker) and SIGTERM
    at its default (``pool.terminate`` ends the worker at once)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
