"""Parity plots (prediction vs label) for energy and forces, as the FastCHGNet paper's Fig. 7."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastchgnet.train.metrics import MetricSums

PANELS = {
    "energy": ("energy (eV/atom)", "meV/atom"),
    "forces": ("force components (eV/Å)", "meV/Å"),
}


def parity_plot(metrics: MetricSums, path: Path, title: str) -> Path | None:
    """Write a PNG with one density-shaded parity panel per target (energy, forces).

    Returns the path, or None when there were no points (or matplotlib is missing).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    points = {name: metrics.parity_points(name) for name in PANELS}
    points = {k: (p.numpy(), t.numpy()) for k, (p, t) in points.items() if p.numel() > 0}
    if not points:
        return None
    results = metrics.results()
    figure, axes = plt.subplots(1, len(points), figsize=(5 * len(points), 4.6), squeeze=False)
    for ax, (name, (predicted, label)) in zip(axes[0], points.items(), strict=True):
        axis_label, unit = PANELS[name]
        low = float(min(predicted.min(), label.min()))
        high = float(max(predicted.max(), label.max()))
        pad = 0.03 * (high - low or 1.0)
        ax.hexbin(label, predicted, gridsize=60, bins="log", cmap="viridis", mincnt=1)
        ax.plot([low - pad, high + pad], [low - pad, high + pad], "k--", linewidth=0.8)
        ax.set_xlim(low - pad, high + pad)
        ax.set_ylim(low - pad, high + pad)
        ax.set_xlabel(f"label {axis_label}")
        ax.set_ylabel(f"predicted {axis_label}")
        mae, r2 = results.get(f"{name}_mae", np.nan), results.get(f"{name}_r2", np.nan)
        ax.set_title(f"MAE {mae:.3g} {unit}, R² {r2:.4f}  (n={label.size})")
        ax.set_aspect("equal")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
