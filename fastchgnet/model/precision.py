"""The energy model's arithmetic: "float32" (default) or "bf16" mixed precision.

In "bf16" the interaction blocks and the energy and magmom readouts run under
``torch.autocast(dtype=torch.bfloat16)``: their matrix products read bfloat16 (CPUs with
AVX-512 BF16 or AMX, GPU tensor cores). The geometry (positions, strain, bond vectors), every
scatter sum (``layers.scatter_sum`` accumulates bfloat16 rows in float32), the direct heads, the
outputs and the derivative steps' inputs and results stay float32, and so do the weights and
the optimiser state. ``FastCHGNet.set_precision`` chooses; it is not saved with the model.
"""

from __future__ import annotations

import torch

PRECISIONS = ("float32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``, else ValueError naming it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {list(PRECISIONS)}")
    return precision


def autocast(precision: str, device_type: str) -> torch.autocast:
    """The autocast context of ``precision`` on ``device_type`` ("cpu", "cuda"): bfloat16
    for "bf16", disabled (float32 as the inputs) otherwise."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
