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
import logging
import os
import pickle
import signal
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

log = logging.getLogger("fastchgnet.compile")


def available_in_background() -> bool:
    """Whether builds can run in a forked child here: Linux, and CUDA not initialised."""
    return sys.platform.startswith("linux") and not torch.cuda.is_initialized()


class BackgroundBuildError(RuntimeError):
    """A background build raised (its one-line message) or its process died."""


class BackgroundBuild:
    """``build()`` run in a forked child; ``poll`` or ``wait`` for its result, which must
    pickle and not be None. Calls made meanwhile should run within ``spare_core``.

    Args:
        build: what the child runs, with everything the caller has in memory at this call.
        threads: the child's torch threads (inductor sizes its kernels' teams by them).
    """

    def __init__(self, build: Callable[[], Any], threads: int = 1) -> None:
        self.started = time.perf_counter()
        self.seconds: float | None = None  # the child's own, once it is done
        read, write = os.pipe()
        with warnings.catch_warnings():  # the caller's threads (OpenMP's, torch's) stay behind
            warnings.filterwarnings("ignore", ".*multi-threaded.*fork", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read)
            _run_child(build, write, threads)
        os.close(write)
        os.set_blocking(read, False)
        self._pid, self._read, self._chunks = pid, read, []
        self._done = False
        self._finalizer = weakref.finalize(self, _reap, pid, read, True)

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
        """Stop the child (if it still runs) and give the caller its threads back."""
        if not self._done:
            self._done = True
            self._chunks = []
            self._finalizer()

    def _finish(self) -> None:
        self._done = True
        self._finalizer.detach()
        _reap(self._pid, self._read, False)

    def _result(self) -> Any:
        if not self._chunks:
            raise BackgroundBuildError("the build's process ended without a result")
        ok, value, seconds = pickle.loads(b"".join(self._chunks))
        self.seconds = seconds
        if not ok:
            raise BackgroundBuildError(value)
        return value


@contextlib.contextmanager
def spare_core() -> Iterator[None]:
    """One torch thread fewer within the block where this process's threads and a busy child
    would not fit its cores (OpenMP threads waiting for a preempted peer spin)."""
    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if threads < 2 or threads + 1 <= (cores or 1):
        yield
        return
    torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_child(build: Callable[[], Any], write: int, threads: int) -> None:
    """In the child: run ``build`` on ``threads`` torch threads, send (ok, result or message,
    seconds), exit without the parent's exit handlers."""
    status = 0
    start = time.perf_counter()
    try:
        torch.set_num_threads(threads)
        payload = pickle.dumps((True, build(), time.perf_counter() - start))
    except BaseException as error:  # whatever it was, the parent reports it
        status = 1
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        payload = pickle.dumps((False, message, time.perf_counter() - start))
    try:
        with os.fdopen(write, "wb") as out:
            out.write(payload)
    finally:
        os._exit(status)


def _reap(pid: int, read: int, kill: bool) -> None:
    """Close the pipe and collect the child (stopping it first with ``kill``)."""
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os.close(read)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


class Deferred:
    """A program whose build runs in a child (``BackgroundBuild``): calls run ``eager`` on a
    spared core until the child is done; the first call after that gets the program from
    ``ready(result)``, and every later one runs it. A build that fails is logged and
    ``ready(None)`` builds it in place (raising where that fails).

    Args:
        build: what the child runs (its result goes to ``ready``).
        eager: the program run eagerly on the call's inputs.
        ready: the built program, from the child's result (None: build it here).
        threads: the child's torch threads.
    """

    def __init__(
        self,
        build: Callable[[], Any],
        eager: Callable[[Sequence[Any]], Any],
        ready: Callable[[Any], Callable[..., Any]],
        threads: int = 1,
    ) -> None:
        self.pending: BackgroundBuild | None = BackgroundBuild(build, threads)
        self.seconds = 0.0  # the child's, once it is done
        self._eager, self._ready = eager, ready
        self._program: Callable[..., Any] | None = None

    def wait(self) -> None:
        """Wait for the child and take its program."""
        self._collect(wait=True)

    def _collect(self, wait: bool = False) -> None:
        if self.pending is None:
            return
        try:
            result = self.pending.wait() if wait else self.pending.poll()
        except BackgroundBuildError as error:
            log.warning("a background build failed (%s): building in place", error)
            self.seconds, self.pending = self.pending.seconds or 0.0, None
            self._program = self._ready(None)
            return
        if result is not None:
            self.seconds, self.pending = self.pending.seconds or 0.0, None
            self._program = self._ready(result)

    def __call__(self, *inputs: Any) -> Any:
        """The program's outputs for ``inputs``: eager until the build is done."""
        self._collect()
        if self._program is not None:
            return self._program(*inputs)
        with spare_core():
            return self._eager(inputs)
