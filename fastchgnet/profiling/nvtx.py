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


def nvtx_enabled() -> bool:
    """True when ranges are emitted: CUDA available and the ``nvtx`` package installed."""
    if not torch.cuda.is_available():
        return False
    try:
        import nvtx  # noqa: F401  (imported for availability)
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """An NVTX range named ``name`` for the enclosed code (no-op without CUDA)."""
    if not nvtx_enabled():
        yield
        return
    import nvtx

    with nvtx.annotate(message=name, color=COLOURS.get(name, "grey"), domain="fastchgnet"):
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
