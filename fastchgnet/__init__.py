"""FastCHGNet: a fast, scalable re-implementation of the CHGNet interatomic potential."""

from fastchgnet.data.batch import GraphBatch, collate
from fastchgnet.data.graph import CrystalGraph, build_graph
from fastchgnet.errors import StructureError
from fastchgnet.model import FastCHGNet, ModelConfig, Prediction

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
