"""CPU settings while a model runs: denormal floats flushed to zero, freed memory kept.

The second-derivative part of a conservative training step (forces and stress differentiated
again for the weight gradient) produces float32 values below 1.2e-38 (denormals: saturated
sigmoid and SiLU tails multiplied together). x86 cores handle each denormal operand in
microcode, tens of times slower than a normal one, and a step spends much of its time there.
With the FTZ/DAZ bits set, such values become zero: this changes results only below 1e-38,
far under float32 round-off of anything the model outputs, and made the conservative eager
training step 1.7x faster on this CPU (TensorFlow sets the same bits for every CPU op).

The bits live in each thread's MXCSR register, so ``flush_denormals`` sets them for the calling
thread and clears them on exit (nesting counts). Threads created while it is active (an
OpenMP pool started by the first parallel op) inherit them; a pool started earlier keeps its
own state, so the full effect is certain with ``torch.set_num_threads(1)``, or with
``start_thread_team_flushing()`` called before the first parallel op (a training run does, in
``train.run.setup``). The environment variable ``FASTCHGNET_FLUSH_DENORMALS=0`` turns it off.

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
    _state.depth = depth + 1
    try:
        yield bool(_state.active)
    finally:
        _state.depth -= 1
        if _state.depth == 0 and _state.active:
            torch.set_flush_denormal(False)
            _state.active = False


def start_thread_team_flushing() -> bool:
    """Start torch's OpenMP thread team now, inside ``flush_denormals``: its threads inherit
    the bits from the thread that creates them and keep them for the life of the process
    (``flush_denormals`` reaches only the calling thread). Without it, a training run at 2
    threads flushed on its main thread only (issue #14). Call after ``torch.set_num_threads``
    and before any parallel op; once the team exists it changes nothing. Returns whether the
    bits were set (False where disabled or unsupported)."""
    with flush_denormals() as active:
        if active and torch.get_num_threads() > 1:
            torch.ones(torch.get_num_threads() * 65536).sum()  # big enough to run in parallel
    return active


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
