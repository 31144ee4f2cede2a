"""NVTX ranges around the stages of a training step; no-ops without CUDA.

Nsight Systems shows each range on the timeline above the CUDA kernels it launched:

    nsys profile --trace=cuda,nvtx,osrt --capture-range=none -o fastchgnet_step \\
        python bench/bench_train_step.py --steps 20 --mode direct
    nsys stats --report nvtx_sum,cuda_gpu_kern_sum fastchgnet_step.nsys-rep

Use in a training loop (one range per stage, nested inside ``STEP``)::

    with stage(STEP):
        with stage(DATA): batch, labels = next(loader)
        with stage(H2D): batch, labels = batch.to(dev), labels.to(dev)
        with stage(FORWARD): prediction = model(batch)
        with stage(LOSS): loss = loss_fn(prediction, labels)
        with stage(BACKWARD): loss.backward()   # DeepSpeed: engine.backward(loss)
        with stage(ALLREDUCE): ...              # when the all-reduce is explicit
        with stage(OPTIMIZER): optimizer.step() # DeepSpeed: engine.step()
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

import torch

STEP = "train_step"
DATA = "data_loading"
H2D = "host_to_device"
FORWARD = "forward"
LOSS = "loss"
BACKWARD = "backward"
ALLREDUCE = "all_reduce"
OPTIMIZER = "optimizer_step"

#: NVTX colour of each stage (Nsight shows ranges in these colours).
COLOURS = {
    STEP: "white",
    DATA: "yellow",
    H2D: "orange",
    FORWARD: "green",
    LOSS: "cyan",
    BACKWARD: "red",
    ALLREDUCE: "purple",
    OPTIMIZER: "blue",
}

P = ParamSpec("P")
R = TypeVar("R")


Backend = Callable[[str], contextlib.AbstractContextManager]
#: the range emitter: None until first use, then ``_default_backend()`` or ``set_backend``'s
_backend: list[Backend | None] = []


def _default_backend() -> Backend | None:
    """The ``nvtx`` package's ranges (coloured, domain "fastchgnet") when installed, else
    ``torch.cuda.nvtx``; None (no ranges) without CUDA."""
    if not torch.cuda.is_available():
        return None
    try:
        import nvtx
    except ImportError:
        return torch.cuda.nvtx.range

    def annotate(name: str) -> contextlib.AbstractContextManager:
        return nvtx.annotate(message=name, color=COLOURS.get(name, "grey"), domain="fastchgnet")

    return annotate


def set_backend(backend: Backend | None) -> Backend | None:
    """Emit ranges through ``backend(name)`` (a context manager factory; None: no ranges);
    returns the previous one. Tests record the stages a real step enters this way."""
    previous = _backend[0] if _backend else _default_backend()
    _backend[:] = [backend]
    return previous


def nvtx_enabled() -> bool:
    """True when ranges are emitted (CUDA and an NVTX backend, or a backend that was set)."""
    if not _backend:
        _backend.append(_default_backend())
    return _backend[0] is not None


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """An NVTX range named ``name`` for the enclosed code (no-op without CUDA)."""
    if not nvtx_enabled():
        yield
        return
    with _backend[0](name):
        yield


def ranged(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: run the function inside ``stage(name)``."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            with stage(name):
                return fn(*args, **kwargs)

        return inner

    return wrap
