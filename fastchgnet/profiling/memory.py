"""Peak memory of a block of code: CUDA allocator peak on GPU; on CPU the allocator peak and
the resident set size.

CPU allocator peak (``tensor_peak_bytes``, the number to compare): every allocation and free of
torch's CPU allocator is recorded by ``torch.profiler`` (``profile_memory=True``), compiled
code's buffers included; the running sum of those events in time order peaks at the most tensor
memory the block held at once above what was live at entry. It is exact and does not depend on
malloc or the operating system.

RSS (``peak_bytes``): sampled by a background thread every ``interval`` seconds (psutil), so
a peak shorter than the interval can be missed; the peak is reported above the RSS at entry,
which is the memory the block itself needed. Our model calls keep freed heap memory for reuse
(``fastchgnet.numerics.keep_freed_memory``), so RSS would under-count a repeated step;
``return_freed_memory`` makes every allocation of 64 KiB or more a separate mapping that goes
back to the system when freed (tensors are), and trims the heap, so RSS follows live tensors.
Mapping every tensor makes each allocation a page-faulting system call, many times slower:
``exact_rss`` turns it on for a measurement only (afterwards freed memory is kept again), so
time and measure memory in separate runs of a step.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

import psutil
import torch

from fastchgnet.numerics import keep_freed_memory, malloc_thresholds


def return_freed_memory(threshold_bytes: int = 64 * 1024) -> bool:
    """glibc: allocations >= ``threshold_bytes`` are mmapped (returned on free), heap trimmed.

    Returns False where glibc's ``mallopt`` is unavailable (then RSS peaks are approximate).
    """
    return malloc_thresholds(threshold_bytes, threshold_bytes, trim_now=True)


@contextlib.contextmanager
def exact_rss() -> Iterator[bool]:
    """Inside: freed tensors go back to the system (``return_freed_memory``); yields whether
    that could be set. On exit: freed memory kept again (``numerics.keep_freed_memory``, which
    a model call inside does not re-apply), else heap allocation up to 32 MiB."""
    keep_freed_memory()  # settled before the block, so the model calls inside leave it alone
    ok = return_freed_memory()
    try:
        yield ok
    finally:
        if not keep_freed_memory(reapply=True):
            return_freed_memory(32 * 2**20)


@dataclass
class PeakMemory:
    """Context manager measuring a block's peak memory; read ``peak_bytes`` after exit.

    Args:
        device: "cuda" measures torch.cuda.max_memory_allocated above the allocation at
            entry (``peak_bytes`` and ``tensor_peak_bytes`` both); anything else the process
            RSS above the RSS at entry (``peak_bytes``) and the CPU allocator's peak above
            entry (``tensor_peak_bytes``, from torch.profiler memory events).
        interval: RSS sampling period, seconds (CPU only).
    """

    device: str = "cpu"
    interval: float = 0.0005
    peak_bytes: int = 0
    baseline_bytes: int = 0
    tensor_peak_bytes: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()
        self._max_rss = 0

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda") and torch.cuda.is_available()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max_rss = max(self._max_rss, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline_bytes = torch.cuda.memory_allocated()
            return self
        self._profiler = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        )
        self._profiler.__enter__()
        self.baseline_bytes = self._max_rss = self._process.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self.baseline_bytes
            self.tensor_peak_bytes = self.peak_bytes
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._max_rss = max(self._max_rss, self._process.memory_info().rss)
        self.peak_bytes = self._max_rss - self.baseline_bytes
        self._profiler.__exit__(exc_type, exc, traceback)
        self.tensor_peak_bytes = allocator_peak(self._profiler)

    @property
    def peak_mib(self) -> float:
        """RSS (CPU) or allocator (CUDA) peak above entry, MiB."""
        return self.peak_bytes / 2**20

    @property
    def tensor_peak_mib(self) -> float:
        """Allocator peak above entry, MiB (CPU: from the profiler's memory events)."""
        return self.tensor_peak_bytes / 2**20


def allocator_peak(profiler: torch.profiler.profile, device: str = "CPU") -> int:
    """Most bytes held at once above the start, from a finished ``profile_memory=True``
    profile: the running sum of its allocation (+) and free (-) events in time order."""
    events = [
        e
        for e in profiler.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type().name == device
    ]
    events.sort(key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return peak
