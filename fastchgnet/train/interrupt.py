"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM with a checkpoint at the step it reached.

In one process, ``signals.StopSignals(Interrupted)`` turns both signals into a request while
the epochs run: the step under way finishes, the loop reads its totals (so the checkpoint's
count of non-finite steps in a row is current, as at a checkpoint_every step), a checkpoint
is written at that step (mid-epoch: the same state as a periodic one, so ``--resume``
continues bit-identically) and ``Interrupted`` ends the run. A signal during an epoch's
evaluation takes effect after the epoch-end checkpoint. Outside the epochs (data, engine, the
final test), or at a second signal, ``Interrupted`` is raised at once and the newest
checkpoint is the one to resume.

Under a launcher of several ranks no handler is installed: a signal reaches each rank at a
different step, and a checkpoint written at it would need every rank at the same collectives
(the launcher's SIGTERM is ``cli.train``'s peer report instead); Ctrl-C, which reaches every
rank, stops each at once, and the line is printed by one (``failures.interrupted``). Loader
workers ignore both signals (``signals.quiet_child``; one signalled before that leaves SIGINT
to the main process and dies of SIGTERM): the main process stops them.
"""

from __future__ import annotations

from fastchgnet.signals import Stopped
from fastchgnet.train.checkpoint import Progress


class Interrupted(Stopped):
    """The run was stopped by ``signum``. ``where`` it stood ("" unknown; ``at`` sets it),
    ``checkpoint`` the global step of the newest checkpoint (None: none)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.where = ""
        self.checkpoint: int | None = None

    def at(self, progress: Progress | None) -> None:
        """Record where the run stood: ``progress``, or None before the epochs began."""
        if progress is None:
            self.where = "before training"
        elif progress.step_in_epoch == 0 and progress.epoch > 0:  # between epochs, or after
            self.where = f"at step {progress.global_step} (after epoch {progress.epoch})"
        else:
            self.where = f"at step {progress.global_step} (epoch {progress.epoch + 1})"

    def message(self) -> str:
        """One line: where the run stopped and how to continue it."""
        head = f"interrupted {self.where}" if self.where else "interrupted"
        if self.checkpoint is None:
            return f"{head}: no checkpoint yet; start again with --overwrite"
        return f"{head}: checkpoint at step {self.checkpoint}; continue with --resume"
