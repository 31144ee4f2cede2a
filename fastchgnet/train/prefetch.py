"""Batches copied to the device one step ahead, on a side stream (DESIGN.md "Distribution").

On CUDA, ``DevicePrefetcher`` issues the host-to-device copy of batch k+1 on a side stream
before it hands out batch k, so the copy runs while step k computes. Before batch k is handed
out, the consumer's stream waits for the side stream (``wait_stream``: a dependency on the GPU,
no host synchronisation), and every tensor of batch k is marked as used by the consumer's
stream (``record_stream``), so the caching allocator does not give its memory to another
tensor while the step that reads it may still be running. The host batches should be pinned
(``make_loader`` pins them on CUDA), or the "asynchronous" copies are synchronous.

The stream operations sit behind ``Streams`` so the ordering and lifetime logic can be tested
on a CPU with a stand-in that records the calls (tests/train/test_prefetch.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from torch import Tensor

from fastchgnet.data.batch import GraphBatch, tensors_of
from fastchgnet.data.labels import LabelBatch
from fastchgnet.profiling.nvtx import DATA, H2D, stage

Pair = tuple[GraphBatch, LabelBatch]


class Streams(Protocol):
    """The stream operations the prefetcher uses (``CudaStreams`` on a GPU)."""

    def new_stream(self) -> Any:
        """A new stream for the copies."""

    def current_stream(self) -> Any:
        """The stream the consumer's work runs on now; it has ``wait_stream(other)``."""

    def use(self, stream: Any) -> AbstractContextManager[Any]:
        """A context in which work (the copies) is issued on ``stream``."""

    def record(self, tensor: Tensor, stream: Any) -> None:
        """Mark ``tensor`` as used by work on ``stream`` (``Tensor.record_stream``)."""


class CudaStreams:
    """``Streams`` on a CUDA device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def new_stream(self) -> torch.cuda.Stream:
        return torch.cuda.Stream(self.device)

    def current_stream(self) -> torch.cuda.Stream:
        return torch.cuda.current_stream(self.device)

    def use(self, stream: torch.cuda.Stream) -> AbstractContextManager[Any]:
        return torch.cuda.stream(stream)

    def record(self, tensor: Tensor, stream: torch.cuda.Stream) -> None:
        tensor.record_stream(stream)


class DevicePrefetcher:
    """Iterate (GraphBatch, LabelBatch) pairs already on ``device``.

    Args:
        batches: host batches in order (e.g. a ``DataLoader`` from ``make_loader``).
        device: where the batches go.
        stream_factory: ``device -> Streams``; default ``CudaStreams`` on a CUDA device. With
            none (the default on a CPU) each batch is moved with a plain ``.to(device)``.

    Every batch is handed out once, in the order ``batches`` gives, the last one too.
    """

    def __init__(
        self,
        batches: Iterable[Pair],
        device: torch.device | str,
        stream_factory: Callable[[torch.device], Streams] | None = None,
    ) -> None:
        self.batches = batches
        self.device = torch.device(device)
        if stream_factory is None and self.device.type == "cuda":
            stream_factory = CudaStreams
        self.streams = stream_factory(self.device) if stream_factory is not None else None

    @staticmethod
    def _next(source: Iterator[Pair]) -> Pair | None:
        """The loader's next batch (None at the end), the wait for it as an NVTX range."""
        with stage(DATA):
            return next(source, None)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Pair]:
        source = iter(self.batches)
        if self.streams is None:
            while (pair := self._next(source)) is not None:
                with stage(H2D):
                    moved = pair[0].to(self.device), pair[1].to(self.device)
                yield moved
            return
        streams = self.streams
        side = streams.new_stream()

        def copy_next() -> Pair | None:
            pair = self._next(source)
            if pair is None:
                return None
            with stage(H2D), streams.use(side):
                graph, labels = pair
                return graph.to(self.device, non_blocking=True), labels.to(
                    self.device, non_blocking=True
                )

        upcoming = copy_next()
        while upcoming is not None:
            current = streams.current_stream()
            current.wait_stream(side)  # the copy of `upcoming` is done before the step reads it
            for tensor in tensors_of(upcoming[0]) + tensors_of(upcoming[1]):
                streams.record(tensor, current)
            ready, upcoming = upcoming, copy_next()  # the next copy overlaps this step
            yield ready
