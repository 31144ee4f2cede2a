"""Capture for fixed shapes: traced, compiled (and on CUDA graph-replayed) model calls and
training steps; see capture.py and step.py."""

from fastchgnet.compile.capture import CapturedModel, CaptureStats
from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.compile.programs import fixed_shape_loss

__all__ = ["CaptureStats", "CapturedModel", "CompiledPotential", "fixed_shape_loss"]
