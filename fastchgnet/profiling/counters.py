"""Count the aten operators (CPU) and CUDA kernels a training step dispatches (torch.profiler).

Every operator call the dispatcher sees is one event ``aten::name``, nested calls included
(``aten::linear`` calls ``aten::addmm``): the count is the number of operator dispatches, each a
host-side cost. A compiled graph runs its fused kernels as generated code and dispatches only
the operators it calls out to (matrix products, index_add), so it counts few. On CUDA, kernel
launches are counted too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

#: CUDA activities that are copies or fills, not kernels of the step's maths.
NOT_KERNELS = ("Memcpy", "Memset", "memcpy", "memset")


@dataclass
class OpCount:
    """Per-step counts: ``aten_ops`` all aten operator dispatches (nested included),
    ``top_level_ops`` those not called from another aten op, ``cuda_kernels`` GPU kernels
    run (copies and fills excluded; kernels replayed inside a CUDA graph included; 0 on CPU),
    ``by_name`` aten dispatches per operator name."""

    aten_ops: float
    top_level_ops: float
    cuda_kernels: float
    by_name: Counter = field(default_factory=Counter)

    def most_common(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` most dispatched operators, per step."""
        return self.by_name.most_common(n)


def count_ops(step: Callable[[], object], steps: int = 1) -> OpCount:
    """Profile ``steps`` calls of ``step`` (warm it up first: a first call may compile) and
    return the counts per call."""
    activities = [ProfilerActivity.CPU]
    cuda = torch.cuda.is_available()
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    names: Counter = Counter()
    top_level = kernels = 0
    for event in prof.events():
        if event.device_type == DeviceType.CUDA:
            kernels += not event.name.startswith(NOT_KERNELS)
            continue
        if not event.name.startswith("aten::"):
            continue
        names[event.name] += 1
        parent = event.cpu_parent
        if parent is None or not parent.name.startswith("aten::"):
            top_level += 1
    per_step = Counter({name: count / steps for name, count in names.items()})
    return OpCount(
        aten_ops=sum(names.values()) / steps,
        top_level_ops=top_level / steps,
        cuda_kernels=kernels / steps,
        by_name=per_step,
    )
