"""Label coverage of a graph cache: how many structures have each label, printed at the end of
``convert`` so that a cache without labels (a wrong energy key or label key names) shows at
once, not as a failed fit in training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastchgnet.data.cache import LABELS, GraphDataset

#: label (``cache.LABELS``) -> its short name in messages
SHORT_NAMES = {"energy_per_atom": "energy", "forces": "forces", "stress": "stress",
               "magmoms": "magmoms"}  # fmt: skip


def format_coverage(label_mask: np.ndarray) -> str:
    """'labels: energy 3/4, forces 3/4, stress 0/4, magmoms 0/4 frames' of a (N, 4)
    ``label_mask`` (columns in ``cache.LABELS`` order)."""
    n = label_mask.shape[0]
    counts = label_mask.sum(axis=0)
    parts = [f"{SHORT_NAMES[name]} {int(c)}/{n}" for name, c in zip(LABELS, counts, strict=True)]
    return f"labels: {', '.join(parts)} frames"


def coverage_report(cache_dir: str | Path) -> list[str]:
    """Lines on the labels of the finished cache at ``cache_dir``: its coverage
    (``format_coverage``) and, when no structure has an energy label while some are kept, a
    warning that training cannot use it as it is."""
    mask = GraphDataset(cache_dir, verify=False).label_mask
    lines = [format_coverage(mask)]
    if mask.shape[0] and not mask[:, 0].any():
        lines.append(
            f"WARNING: no frame in {cache_dir} has an energy label; training needs one: check "
            "--energy-key (MPtrj) or --labels (extxyz/ASE-db key names) and convert again"
        )
    return lines
