"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM with a checkpoint at the step it reached.

In one process, ``StopSignals`` turns both signals into a request while the epochs run: the
step under way finishes, the loop reads its totals (so the checkpoint's count of non-finite
steps in a row is current, as at a checkpoint_every step), a checkpoint is written at that
step (mid-epoch: the same state as a periodic one, so ``--resume`` continues bit-identically)
and ``Interrupted`` ends the run. A signal during an epoch's evaluation takes effect after
the epoch-end checkpoint. Outside the epochs (data, engine, the final test), or at a second
signal, ``Interrupted`` is raised at once and the newest checkpoint is the one to resume.

Under a launcher of several ranks no handler is installed: a signal reaches each rank at a
different step, and a checkpoint written at it would need every rank at the same collectives
(the launcher's SIGTERM is ``cli.train``'s peer report instead). Loader workers ignore both
signals (``loading.ignore_stop_signals``; a forked one also returns from this handler): the
main process stops them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from fastchgnet.train.checkpoint import Progress

#: the signals that stop a run
STOPS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by ``signum``. ``where`` it stood ("" unknown; ``at`` sets it),
    ``checkpoint`` the global step of the newest checkpoint (None: none)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.where = ""
        self.checkpoint: int | None = None

    def at(self, progress: Progress | None) -> None:
        """Record where the run stood: ``progress``, or None before the epochs began."""
        if progress is None:
            self.where = "before training"
        else:
            self.where = f"at step {progress.global_step} (epoch {progress.epoch + 1})"

    @property
    def exit_code(self) -> int:
        """128 + the signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum

    def message(self) -> str:
        """One line: where the run stopped and how to continue it."""
        head = f"interrupted {self.where}" if self.where else "interrupted"
        if self.checkpoint is None:
            return f"{head}: no checkpoint yet; start again with --overwrite"
        return f"{head}: checkpoint at step {self.checkpoint}; continue with --resume"


class StopSignals:
    """SIGINT and SIGTERM handling of one training process (see the module docstring):
    ``signum`` is the signal received while ``deferring`` (0: none)."""

    def __init__(self) -> None:
        self.signum = 0
        self.deferring = False
        self.pid = os.getpid()

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for while the epochs ran."""
        return self.signum != 0

    def _handle(self, signum: int, frame: object) -> None:
        if os.getpid() != self.pid:  # a forked loader worker (Ctrl-C reaches the whole group)
            return  # the main process stops it
        if self.requested or not self.deferring:
            raise Interrupted(signum)
        self.signum = signum
        name = signal.Signals(signum).name
        print(
            f"{name}: stopping after this step with a checkpoint (again: at once)", file=sys.stderr
        )

    @contextlib.contextmanager
    def installed(self, enabled: bool) -> Iterator[StopSignals]:
        """Within the block the signals are handled here (where ``enabled`` and in the main
        thread); the previous handlers are restored after."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.getsignal(signum) for signum in STOPS}
        for signum in STOPS:
            signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Within the block a first signal is a request (``requested``), not an exception."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False

    def raise_if_requested(self) -> None:
        """Raise ``Interrupted`` for a signal received while deferring."""
        if self.requested:
            raise Interrupted(self.signum)
