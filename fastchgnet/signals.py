"""Stopping a long job cleanly on SIGINT (Ctrl-C) or SIGTERM (a batch scheduler, ``kill``):
one handler for every job (training, data conversion, relaxation, MD) and one set-up for the
child processes under them.

``StopSignals`` turns either signal into an exception (``stop_exception``: KeyboardInterrupt
for SIGINT, as Python's own handler, and ``SystemExit(143)`` for SIGTERM, so an uncaught one
ends the process quietly with the code a shell expects), so ``finally`` blocks run (temporary
files removed, partial results written); a job that should finish its step first (training)
defers the first signal to a request it reads (``deferred``, ``raise_if_requested``), and a
job that reports how far it got raises a ``Stopped`` of its own (``stop_signal`` reads the
signal of any of them). Children started under a job (``quiet_child``) leave Ctrl-C to their
parent, which stops them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

#: the signals that stop a job
STOPS = (signal.SIGINT, signal.SIGTERM)

#: each stop signal's handler when no one has set one (Python's SIGINT handler, the system's
#: SIGTERM action)
DEFAULT_HANDLERS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


class Stopped(KeyboardInterrupt):
    """A job stopped by signal ``signum``, saying how far it got (a subclass's fields); a
    KeyboardInterrupt, so code that lets Ctrl-C through lets it through too."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


def stop_exception(signum: int) -> BaseException:
    """What a job raises for signal ``signum`` where it has no step to finish: KeyboardInterrupt
    for SIGINT (as Python's own handler), ``SystemExit(128 + signum)`` for SIGTERM (uncaught,
    the process ends quietly with 143)."""
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


def stop_signal(stop: BaseException) -> int | None:
    """The signal that stopped a job: ``Stopped``'s own, SIGINT for any other
    KeyboardInterrupt (Ctrl-C), SIGTERM for ``stop_exception``'s SystemExit(143); None for
    anything else (another SystemExit)."""
    if isinstance(stop, Stopped):
        return stop.signum
    if isinstance(stop, KeyboardInterrupt):
        return int(signal.SIGINT)
    if isinstance(stop, SystemExit) and stop.code == 128 + signal.SIGTERM:
        return int(signal.SIGTERM)
    return None


class StopSignals:
    """SIGINT and SIGTERM handling of one process: each raises ``stopped(signum)``
    (``stop_exception``, or a ``Stopped`` class), except a first one while ``deferring``,
    which is kept as a request (``signum``; 0: none) and announced on stderr. A forked child
    that inherits the handler leaves SIGINT to its parent and dies of SIGTERM."""

    def __init__(self, stopped: Callable[[int], BaseException] = stop_exception) -> None:
        self.signum = 0
        self.deferring = False
        self.pid = os.getpid()
        self._stopped = stopped

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for while deferring."""
        return self.signum != 0

    def _handle(self, signum: int, frame: object) -> None:
        if os.getpid() != self.pid:  # a forked child, before its own set-up (``quiet_child``)
            quiet_child()  # Ctrl-C (to the whole group) is the parent's to act on; SIGTERM
            if signum == signal.SIGTERM:  # (``Pool.terminate``) ends the child, as it would
                os.kill(os.getpid(), signal.SIGTERM)  # have without this handler
            return
        if self.requested or not self.deferring:
            raise self._stopped(signum)
        self.signum = signum
        name = signal.Signals(signum).name
        print(
            f"{name}: stopping after this step with a checkpoint (again: at once)", file=sys.stderr
        )

    @contextlib.contextmanager
    def installed(self, enabled: bool = True, keep_others: bool = False) -> Iterator[StopSignals]:
        """Within the block the signals are handled here (where ``enabled`` and in the main
        thread); with ``keep_others``, only those whose handler is still the default
        (``DEFAULT_HANDLERS``): a launcher's or an enclosing job's handler, or an ignored
        SIGINT (a background shell job), is left alone. The previous handlers come back
        after."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.getsignal(signum) for signum in STOPS}
        taken = [s for s in STOPS if not keep_others or previous[s] is DEFAULT_HANDLERS[s]]
        for signum in taken:
            signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for signum in taken:
                signal.signal(signum, previous[signum])

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Within the block a first signal is a request (``requested``), not an exception."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False

    def raise_if_requested(self) -> None:
        """Raise ``stopped`` for a signal received while deferring."""
        if self.requested:
            raise self._stopped(self.signum)


def stop_signals() -> contextlib.AbstractContextManager[StopSignals]:
    """A job's stop handling (``StopSignals``, not deferring) for a block: SIGINT raises
    KeyboardInterrupt and SIGTERM ``SystemExit(143)`` there (``stop_exception``), unless a
    handler is already set (an enclosing job's, a launcher's)."""
    return StopSignals().installed(keep_others=True)


def quiet_child(ignore_sigterm: bool = False) -> None:
    """The start of a child process under a job (a conversion worker, a loader worker, a
    background build): SIGINT is ignored (Ctrl-C reaches the whole process group, and the job
    stops its children, with one message rather than a traceback from each); SIGTERM is
    ignored too with ``ignore_sigterm`` (a scheduler's SIGTERM to the group reaches the job's
    handler, which must not find its loader workers killed mid-step), else it takes its
    default action (``Pool.terminate`` ends the worker at once). Where the handlers cannot be
    set (not the process's main thread) they stay as they are."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore_sigterm else signal.SIG_DFL)


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """SIGINT and SIGTERM held back within the block and delivered as it ends, to the handler
    then set (or their default action): for imports, which a stop must not cut half-way (a
    module left half made fails later on an attribute, e.g. numpy's ``linalg._umath_linalg``;
    a KeyboardInterrupt raised in the import machinery's callbacks is dropped as "Exception
    ignored", and the command runs on). The handlers only note the signal meanwhile (a mask
    would not do: another thread of the process may take the signal); where they cannot be
    set (not the main thread) the block runs as it is."""
    held: list[int] = []
    try:
        previous = {signum: signal.signal(signum, lambda s, _: held.append(s)) for signum in STOPS}
    except ValueError:  # not the main thread: the handlers are not ours to set
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:  # delivered now, where the block's code is done
            signal.raise_signal(held[0])
