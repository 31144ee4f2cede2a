"""FastCHGNet: a fast, scalable re-implementation of the CHGNet interatomic potential.

The names below are imported when first used (``from fastchgnet import FastCHGNet`` as ever):
``import fastchgnet`` alone loads no torch, so the ``fastchgnet`` command can take a Ctrl-C
or SIGTERM while torch loads and end in one line (``cli.main``).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastchgnet.data.batch import GraphBatch, collate
    from fastchgnet.data.graph import CrystalGraph, build_graph
    from fastchgnet.errors import StructureError
    from fastchgnet.model import FastCHGNet, ModelConfig, Prediction

#: exported name -> the module that defines it
_EXPORTS = {
    "CrystalGraph": "fastchgnet.data.graph",
    "FastCHGNet": "fastchgnet.model",
    "GraphBatch": "fastchgnet.data.batch",
    "ModelConfig": "fastchgnet.model",
    "Prediction": "fastchgnet.model",
    "StructureError": "fastchgnet.errors",
    "build_graph": "fastchgnet.data.graph",
    "collate": "fastchgnet.data.batch",
}
__all__ = [
    "CrystalGraph",
    "FastCHGNet",
    "GraphBatch",
    "ModelConfig",
    "Prediction",
    "StructureError",
    "build_graph",
    "collate",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """An exported name, imported from its module on first use; or a subpackage
    (``fastchgnet.model``), as the eager imports made them attributes before."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif importlib.util.find_spec(f"fastchgnet.{name}") is not None:
        value = importlib.import_module(f"fastchgnet.{name}")
    else:
        raise AttributeError(f"module 'fastchgnet' has no attribute {name!r}")
    globals()[name] = value
    return value
