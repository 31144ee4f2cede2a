"""The one lock on a folder that a process writes into: a training run's ``run.out_dir``
(``train.outputs.run_lock``), a graph cache while ``data.convert`` fills it. A second
process there is refused in one line naming the one at work, instead of writing beside it
or deleting its files under it. ``made_folders``: a folder made for a job, with its missing
parents, and removed again where the job leaves it empty (a failed conversion's folder, and
the parents ``data convert`` made for it)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def folder_lock(
    folder: Path, lock_file: str, refusal: str, take: bool = True, keep_empty: bool = True
) -> Iterator[None]:
    """Within the block this process holds ``folder/lock_file`` (an exclusive ``flock``, which
    the system releases when the process ends, killed or not; the file is removed at the
    block's end), where ``take``; ``folder`` is made if missing (with its missing parents).
    Without ``keep_empty``, the folders made here that are empty at the block's end are
    removed again (a conversion that failed before writing anything leaves no empty folder);
    a folder that existed before is never removed.

    Raises:
        ValueError: ``refusal`` with ``{holder}`` replaced by the process (pid, host) that
            holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        fcntl = None
    if not take or fcntl is None:
        yield
        return
    with made_folders(folder, keep_empty), _held(folder, lock_file, refusal):
        yield


@contextlib.contextmanager
def made_folders(folder: Path, keep_empty: bool = True) -> Iterator[None]:
    """Within the block ``folder`` exists (made with its missing parents). Without
    ``keep_empty``, the folders made here that are empty at the block's end, however it ends
    (an error, a signal's exception, a return), are removed again, innermost first; a folder
    that existed before is never removed, nor one that holds anything."""
    whole = Path(os.path.abspath(folder))  # ".." resolved as the path reads: x/../new is new
    made: list[Path] = []  # the levels this call made, innermost first
    for level in reversed((whole, *whole.parents)):
        try:
            level.mkdir()
        except FileExistsError:  # there before, or made meanwhile by another process
            continue
        made.insert(0, level)
    try:
        yield
    finally:
        for empty in [] if keep_empty else made:  # innermost first
            try:
                empty.rmdir()  # only if empty: whatever another process put there stays
            except OSError:
                break


@contextlib.contextmanager
def _held(folder: Path, lock_file: str, refusal: str) -> Iterator[None]:
    import fcntl

    with open(folder / lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ValueError(refusal.replace("{holder}", holder)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:  # the folder as the process left it (a killed one's file stays, unlocked)
            with contextlib.suppress(OSError):
                (folder / lock_file).unlink()
