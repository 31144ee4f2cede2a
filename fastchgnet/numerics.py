"""CPU settings while a model runs: denormal floats flushed to zero, freed memory kept.

The second-derivative part of a conservative training step (forces and stress differentiated
again for the weight gradient) produces float32 values below 1.2e-38 (denormals: saturated
sigmoid and SiLU tails multiplied together). x86 cores handle each denormal operand in
microcode, tens of times slower than a normal one, and a step spends much of its time there.
With the FTZ/DAZ bits set, such values become zero: this changes results only below 1e-38,
far under float32 round-off of anything the model outputs, and made the conservative eager
training step 1.7x faster on this CPU (TensorFlow sets the same bits for every CPU op).

The bits live in each thread's MXCSR register, so ``flush_denormals`` sets them for the calling
thread and clears them on exit (nesting counts). The worker threads of torch's OpenMP team
keep theirs for their life, inherited from the thread that started them: a team started
outside ``flush_denormals`` (any parallel torch op before our first model call) never flushes
on its workers, and an 8-atom MD step on 2 threads took 18.0 against 14.1 ms that way (stop
39). So the first ``flush_denormals`` of a thread (and again after the thread count changes)
runs ``team_flushing``: it checks that a parallel op flushes on every thread and, where one
does not, lets the OpenMP runtime free its team (``omp_pause_resource_all``) so that the next
parallel op, inside the block, starts a new one that inherits the bits. From then on the
workers flush for the life of the process, as they would in a team started inside the block
(a training run's, or any process whose first parallel op is ours); the calling thread is
still cleared on exit. The environment variable ``FASTCHGNET_FLUSH_DENORMALS=0`` turns all of
it off.

Freed memory kept (``keep_freed_memory``, applied once per process by the first
``flush_denormals``, so by every model call, training step and run of ours): glibc's malloc
returns freed blocks of a few MiB to the system (the top of its heap is trimmed past a dynamic
threshold, and larger blocks are separate mappings), so the next step's tensors of the same
sizes page-fault their memory in again, zero-filled by the kernel. An eager conservative
training step at batch 16 took 51,600 such faults (about 200 MiB) and a 64-atom MD force call
2,200; keeping the blocks (mapped up to 32 MiB, top trimmed only past 1 GiB) cut them to a few
hundred, and the training step ran 1.00x, 1.28x and 1.49x faster in three pairs of runs on
a noisy machine (stop 28, 2 threads). The process then holds
its peak heap for reuse instead of returning it, as a caching allocator does.
``FASTCHGNET_KEEP_FREED_MEMORY=0`` turns it off; it acts only with glibc (Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator

import torch
from torch.fx.experimental.proxy_tensor import get_proxy_mode
from torch.utils._python_dispatch import _get_current_dispatch_mode

_state = threading.local()


def flush_denormals_enabled() -> bool:
    """Whether ``flush_denormals`` acts (not disabled by FASTCHGNET_FLUSH_DENORMALS=0)."""
    return os.environ.get("FASTCHGNET_FLUSH_DENORMALS", "1") != "0"


@contextlib.contextmanager
def flush_denormals() -> Iterator[bool]:
    """Inside: denormal floats are flushed to zero on this thread (x86 with SSE3 / ARM).

    Yields whether flushing is active (False where the CPU cannot or it is disabled).
    """
    depth = getattr(_state, "depth", 0)
    if depth == 0:
        keep_freed_memory()
        _state.active = flush_denormals_enabled() and torch.set_flush_denormal(True)
        if _state.active:
            team_flushing()
    _state.depth = depth + 1
    try:
        yield bool(_state.active)
    finally:
        _state.depth -= 1
        if _state.depth == 0 and _state.active:
            torch.set_flush_denormal(False)
            _state.active = False


def team_flushes() -> bool:
    """Whether a parallel torch op flushes denormal results on every thread of the calling
    thread's team now (call inside ``flush_denormals``): a product of normal numbers whose
    result is denormal, big enough to be split over every thread, must come out all zero."""
    n = torch.get_num_threads() * (1 << 16)
    tiny = torch.full((n,), 1e-30, dtype=torch.float32, device="cpu")
    return bool(((tiny * 1e-10) == 0).all())


#: file names of the OpenMP runtimes torch's CPU builds use (GNU, Intel, LLVM)
OPENMP_RUNTIMES = ("libgomp", "libiomp5", "libomp")
#: ``omp_pause_resource_all``'s soft pause: the runtime frees its threads, keeps its settings
OMP_PAUSE_SOFT = 1


def team_flushing() -> bool:
    """Inside ``flush_denormals``: make every thread of this thread's OpenMP team flush, once
    per thread and thread count (see the module docstring). Returns whether they do; False
    where the team cannot be restarted (no OpenMP runtime found, or inside a parallel
    region), and the workers then go on as they were. Nothing is checked while a graph is
    traced (dynamo, make_fx) or under a dispatch mode: the check's ops would be traced or
    counted."""
    # per Python thread (each drives a team of its own), by thread count; every model call
    # enters here, so a team already checked costs one lookup
    teams: dict[int, bool] = _state.__dict__.setdefault("teams", {})
    threads = torch.get_num_threads()
    if threads in teams:
        return teams[threads]
    if (
        torch.compiler.is_compiling()
        or get_proxy_mode() is not None
        or _get_current_dispatch_mode() is not None  # e.g. a FLOP counter: keep its counts
    ):
        return False
    teams[threads] = threads == 1 or team_flushes() or (restart_thread_team() and team_flushes())
    return teams[threads]


def flush_thread_team() -> bool:
    """Every thread of torch's CPU thread team flushes denormals from now on (this thread
    only inside ``flush_denormals``). Returns whether they do (False where disabled,
    unsupported, or the team could not be restarted)."""
    with flush_denormals() as active:
        return active and team_flushing()


def restart_thread_team() -> bool:
    """Let each OpenMP runtime in this process free its thread team (a soft
    ``omp_pause_resource_all``): the next parallel op starts a new team whose threads take the
    calling thread's floating-point mode. Returns whether a runtime did; False without
    ``/proc/self/maps`` (not Linux) or a runtime that exports the call."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line and ".so" in line}
    except OSError:
        return False
    done = False
    for path in sorted(paths):
        if not os.path.basename(path).startswith(OPENMP_RUNTIMES):
            continue
        try:
            pause = ctypes.CDLL(path).omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
        done |= pause(OMP_PAUSE_SOFT) == 0
    return done


#: glibc ``mallopt`` parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: ``keep_freed_memory``: blocks below this are carved from the heap (glibc's maximum), and
#: the heap's free top goes back to the system only past ``KEEP_TRIM_BYTES``
KEEP_MMAP_BYTES, KEEP_TRIM_BYTES = 32 * 2**20, 2**30
_kept: dict[str, bool] = {}


def malloc_thresholds(mmap_bytes: int, trim_bytes: int, trim_now: bool = False) -> bool:
    """glibc: allocations of ``mmap_bytes`` or more get their own mapping (returned to the
    system when freed); the heap's free top is returned past ``trim_bytes``; ``trim_now``
    returns free heap memory at once. False where glibc's ``mallopt`` is unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        ok = libc.mallopt(M_MMAP_THRESHOLD, int(mmap_bytes)) == 1
        ok &= libc.mallopt(M_TRIM_THRESHOLD, int(trim_bytes)) == 1
        if trim_now:
            libc.malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        return False
    return bool(ok)


def keep_freed_memory(reapply: bool = False) -> bool:
    """Once per process (again with ``reapply``): freed blocks up to 32 MiB stay with the
    process for reuse instead of page-faulting back in (see the module docstring). Returns
    whether the setting is in force (False where disabled or not glibc)."""
    if "ok" not in _kept or reapply:
        enabled = os.environ.get("FASTCHGNET_KEEP_FREED_MEMORY", "1") != "0"
        _kept["ok"] = enabled and malloc_thresholds(KEEP_MMAP_BYTES, KEEP_TRIM_BYTES)
    return _kept["ok"]
