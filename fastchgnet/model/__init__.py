"""The CHGNet model and its readouts."""

from fastchgnet.model.chgnet import FastCHGNet, Prediction
from fastchgnet.model.config import ModelConfig

__all__ = ["FastCHGNet", "ModelConfig", "Prediction"]
