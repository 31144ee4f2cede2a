"""The energy model's arithmetic: "float32" (default) or "bf16" mixed precision.

In "bf16" the interaction blocks and the energy and magmom readouts run under
``torch.autocast(dtype=torch.bfloat16)``: their matrix products read bfloat16 (CPUs with
AVX-512 BF16 or AMX, GPU tensor cores). The geometry (positions, strain, bond vectors), every
scatter sum (``layers.scatter_sum`` accumulates bfloat16 rows in float32), the direct heads, the
outputs and the derivative steps' inputs and results stay float32, and so do the weights and
the optimiser state. ``FastCHGNet.set_precision`` chooses; it is not saved with the model.
"""

from __future__ import annotations

import warnings

import torch

PRECISIONS = ("float32", "bf16")


def check_precision(
    precision: str, device_type: str | None = None, dtype: torch.dtype = torch.float32
) -> str:
    """``precision`` if it is one of ``PRECISIONS``, else ValueError naming it; "bf16" of a
    model whose weights are ``dtype`` float64 is a ValueError too (autocast keeps float64
    products in float64: the option would change nothing). With ``device_type``, "bf16" on a
    device without bfloat16 matrix hardware (``bf16_hardware``) warns (RuntimeWarning): there
    it is emulated, and slower than float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {list(PRECISIONS)}")
    if precision == "bf16" and dtype == torch.float64:
        raise ValueError("precision bf16: this model is float64; convert it (.float()) first")
    if precision == "bf16" and device_type is not None and not bf16_hardware(device_type):
        warnings.warn(
            f"bf16 on this {device_type} (no AVX-512 BF16, AMX or bf16 tensor cores) is emulated: "
            "6-7x slower than float32 on an AVX2 CPU (docs/performance.md, Mixed precision)",
            RuntimeWarning,
            stacklevel=3,
        )
    return precision


def bf16_hardware(device_type: str) -> bool:
    """Whether ``device_type`` ("cpu", "cuda") multiplies bfloat16 matrices in hardware: a GPU
    that supports bfloat16, or a CPU with AVX-512 BF16 or AMX tiles."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return True  # other devices: not ours to judge


def autocast(precision: str, device_type: str) -> torch.autocast:
    """The autocast context of ``precision`` on ``device_type`` ("cpu", "cuda"): bfloat16
    for "bf16", disabled (float32 as the inputs) otherwise."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
