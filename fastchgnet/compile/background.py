"""Build in a forked child process while the caller goes on (``script.ScriptedProgram``).

A TorchScript build is a symbolic trace: about 3 s of Python that holds the GIL nearly
throughout. Built in a thread, it starved an MD loop's eager calls (LiMnO2, 2 cores: 5-10 calls
in the 3 s, 0.3-0.8 s each). A child forked from the caller has the model, the imports and the
inputs already; it builds on one core and sends the picklable result back through a pipe, and
the caller runs its calls eagerly meanwhile, each on one torch thread fewer where its threads
and the child would otherwise share a core (``spare_core``): OpenMP threads that wait for a
preempted peer spin, and eager MD calls then took 495 ms instead of 11 ms. Measured
on LiMnO2 MD, 2 cores: 261 eager calls of 11.2 ms (9.4 ms on both threads) while the child built
in 2.95 s, a stall of 2.95 s when the build runs in place.

Only on Linux (fork is unsafe on macOS and absent on Windows) and before CUDA is initialised
(a forked child cannot use it): elsewhere ``available_in_background`` is False and builds run
in place.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch

from fastchgnet.signals import quiet_child

#: The builds of this process (``busy``: those whose child has not answered yet); calls that
#: run while one builds keep a spare core whatever they run (``spare_core``).
_BUILDS: weakref.WeakSet[BackgroundBuild] = weakref.WeakSet()


def available_in_background() -> bool:
    """Whether builds can run in a forked child here: Linux, CUDA not initialised, and at
    least 2 usable cores (on one, the child would only take turns with the caller)."""
    return (
        sys.platform.startswith("linux") and not torch.cuda.is_initialized() and usable_cores() >= 2
    )


def usable_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy() -> bool:
    """Whether a child of this process is building now. Every unfinished build is read on
    first (``BackgroundBuild.poll``, which keeps its result for its owner): a child that is
    done is collected here, not only when its owner next asks. A program called once in
    many MD steps (a written frame's stress) left its finished child counted, and blocked
    on a full pipe, for hundreds of steps, each run on one torch thread fewer and none able
    to start another build."""
    me = os.getpid()  # a process forked later holds copies of the builds, not their pipes' data
    building = [build for build in list(_BUILDS) if build.owner == me and not build.done]
    for build in building:
        with contextlib.suppress(BackgroundBuildError):
            build.poll()
    return any(not build.done for build in building)


class BackgroundBuildError(RuntimeError):
    """A background build raised (its one-line message), its process died, or it could not
    start."""


class BackgroundBuild:
    """``build()`` run in a forked child; ``poll`` or ``wait`` for its result, which must
    pickle and not be None. Calls made meanwhile should run within ``spare_core``.

    Args:
        build: what the child runs, with everything the caller has in memory at this call.
        threads: the child's torch threads; a trace reads them (the model picks its gather
            and scatter form by the thread count), so pass the caller's.

    Raises:
        BackgroundBuildError: the child could not be started (fork failed).
    """

    def __init__(self, build: Callable[[], Any], threads: int) -> None:
        self.seconds: float | None = None  # the child's own, once it is done
        read, write = os.pipe()
        for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            with warnings.catch_warnings():  # the caller's threads (OpenMP's) stay behind
                warnings.filterwarnings("ignore", ".*multi-threaded.*fork", DeprecationWarning)
                pid = os.fork()
        except OSError as error:
            os.close(read)
            os.close(write)
            raise BackgroundBuildError(f"could not start a child process: {error}") from error
        if pid == 0:  # the child: never returns
            _run_child(build, read, write, threads)
        os.close(write)
        os.set_blocking(read, False)
        self._pid, self._read, self._chunks = pid, read, []
        self.owner = os.getpid()  # the process that started it, the one to read its answer
        self._done = False
        _BUILDS.add(self)
        self._finalizer = weakref.finalize(self, _reap, pid, read, True, self.owner)

    @property
    def done(self) -> bool:
        """Whether the child's answer is read (or the build cancelled)."""
        return self._done

    def poll(self) -> Any | None:
        """The build's result if it is done (None while it runs); raises
        ``BackgroundBuildError`` if it failed."""
        if not self._done:
            while True:
                try:
                    chunk = os.read(self._read, 1 << 20)
                except BlockingIOError:
                    return None
                if not chunk:
                    break
                self._chunks.append(chunk)
            self._finish()
        return self._result()

    def wait(self) -> Any:
        """The build's result, waiting for it; raises ``BackgroundBuildError`` if it failed."""
        if not self._done:
            os.set_blocking(self._read, True)
            while chunk := os.read(self._read, 1 << 20):
                self._chunks.append(chunk)
            self._finish()
        return self._result()

    def cancel(self) -> None:
        """Stop the child if it still runs (a later ``poll`` raises)."""
        if not self._done:
            self._done = True
            self._chunks = []
            self._finalizer()

    def _finish(self) -> None:
        self._done = True
        self._finalizer.detach()
        _reap(self._pid, self._read, False, os.getpid())

    def _result(self) -> Any:
        try:
            ok, value, seconds = pickle.loads(b"".join(self._chunks))
        except Exception as error:  # nothing, or a payload cut short: the child died
            raise BackgroundBuildError("the build's process ended without a result") from error
        self.seconds = seconds
        if not ok:
            raise BackgroundBuildError(value)
        return value


@contextlib.contextmanager
def spare_core() -> Iterator[None]:
    """One torch thread fewer within the block where this process's threads and a busy child
    would not fit its cores (OpenMP threads waiting for a preempted peer spin)."""
    threads = torch.get_num_threads()
    if threads < 2 or threads + 1 <= usable_cores():
        yield
        return
    torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_child(build: Callable[[], Any], read: int, write: int, threads: int) -> None:
    """In the child: run ``build`` on ``threads`` torch threads, send (ok, result or message,
    seconds) and exit, whatever happens, without running any of the parent's exit handlers
    or returning into its stack (a Ctrl-C at the terminal goes to the parent)."""
    status = 1
    try:
        quiet_child()  # Ctrl-C at the terminal goes to the parent, which stops the child
        os.close(read)
        start = time.perf_counter()
        try:
            torch.set_num_threads(threads)
            payload = pickle.dumps((True, build(), time.perf_counter() - start))
            status = 0
        except BaseException as error:  # whatever it was, the parent reports it
            message = f"{type(error).__name__}: {error}".splitlines()[0]
            payload = pickle.dumps((False, message, time.perf_counter() - start))
        with os.fdopen(write, "wb") as out:
            out.write(payload)
    finally:
        os._exit(status)


def _reap(pid: int, read: int, kill: bool, owner: int) -> None:
    """Close the pipe and collect the child (stopping it first with ``kill``); only in the
    process that started it (a process forked later holds a copy of this finalizer)."""
    if os.getpid() != owner:
        return
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os.close(read)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
