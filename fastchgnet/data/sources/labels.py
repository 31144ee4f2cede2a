"""Label helpers shared by the readers: float64 arrays, absent labels as None."""

from __future__ import annotations

import numpy as np


def label_array(values: object) -> np.ndarray | None:
    """float64 array of a label, or None when the label is absent."""
    return None if values is None else np.asarray(values, dtype=np.float64)
