"""Capture: traced, compiled (and on CUDA graph-replayed) model calls and training steps, for
fixed shapes, sizes within a capacity, or (TorchScript) any sizes; see capture.py."""

import warnings

from fastchgnet.compile.capture import CapturedModel, CaptureStats
from fastchgnet.compile.potential import CompiledPotential

# torch 2.13's own compile path copies pytree specs whose class it has deprecated, and the
# copy warns ("copyreg.py:105: FutureWarning: isinstance(treespec, LeafSpec) is deprecated")
# on every captured predict: nothing a user can act on, so that one message is not shown
warnings.filterwarnings(
    "ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning
)

__all__ = ["CaptureStats", "CapturedModel", "CompiledPotential"]
