"""Capture: traced, compiled (and on CUDA graph-replayed) model calls and training steps, for
fixed shapes, sizes within a capacity, or (TorchScript) any sizes; see capture.py."""

from fastchgnet.compile.capture import CapturedModel, CaptureStats
from fastchgnet.compile.potential import CompiledPotential

__all__ = ["CaptureStats", "CapturedModel", "CompiledPotential"]
