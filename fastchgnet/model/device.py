"""Devices named by users (``FastCHGNet.load(map_location=)``, compat ``use_device``), checked
once where they are given: one that this torch or this machine cannot use is a one-line error
saying why, instead of torch's ``AssertionError: Torch not compiled with CUDA enabled`` or
``RuntimeError`` from deep inside ``.to``. Not for hot paths (one call per user argument)."""

from __future__ import annotations

import torch


def check_device(
    device: str | torch.device, what: str = "device", kinds: tuple[str, ...] | None = None
) -> torch.device:
    """``device`` ("cpu", "cuda", "cuda:1", a torch.device, or "auto": the current GPU when
    CUDA sees one, else the CPU) as a torch.device. ``what`` names the argument in messages
    ("device", "--device"); ``kinds``: the device types accepted (None: any this torch and
    machine can use).

    Raises:
        ValueError: one line naming ``device``: not a device string torch knows, or not of
            ``kinds``; CUDA asked of a CPU-only torch build or of a machine where torch finds
            no GPU; a CUDA index past the GPUs there are; another type (mps, xpu, ...) this
            torch build or machine cannot use.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"{what} {device!r}: not a torch device (use 'cpu', 'cuda', 'cuda:N' or 'auto')"
        ) from None
    if kinds is not None and parsed.type not in kinds:
        raise ValueError(f"{what} {str(device)!r}: use one of {', '.join(kinds)} (or 'auto')")
    if parsed.type == "cpu":
        return parsed
    if parsed.type != "cuda":  # mps, xpu, ...: whether this build and machine have one
        try:
            torch.empty(0, device=parsed)
        except (RuntimeError, AssertionError) as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            reason = reason.split(". ")[0][:160]  # torch's first sentence
            raise ValueError(f"{what} {str(device)!r}: not usable here ({reason})") from None
        return parsed
    if torch.version.cuda is None and torch.version.hip is None:
        raise ValueError(
            f"{what} {str(device)!r}: CUDA is not available in this torch build (CPU-only "
            f"torch {torch.__version__}); use 'cpu', or install a CUDA build of torch"
        )
    if not torch.cuda.is_available():
        raise ValueError(
            f"{what} {str(device)!r}: CUDA is not available on this machine (torch "
            f"{torch.__version__} found no GPU or driver); use 'cpu'"
        )
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise ValueError(f"{what} {str(device)!r}: this machine has {count} CUDA device(s)")
    return parsed
