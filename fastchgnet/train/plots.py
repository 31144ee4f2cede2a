"""Plots of a run: parity (prediction vs label) for energy, forces, stress and magnetic moments,
as the FastCHGNet paper's Fig. 7, and the learning curve (training loss and validation MAE per
epoch) read back from the run's ``train_log.csv`` and ``metrics.csv``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from fastchgnet.train.metrics import REPORTED, MetricSums

#: target -> (axis label, MAE unit as metrics reports it)
PANELS = {
    "energy": ("energy (eV/atom)", "meV/atom"),
    "forces": ("force components (eV/Å)", "meV/Å"),
    "stress": ("stress components (GPa)", "GPa"),
    "magmoms": ("magnetic moments (μB)", "μB"),
}


def _pyplot() -> object | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def parity_plot(metrics: MetricSums, path: Path, title: str) -> Path | None:
    """Write a PNG with one density-shaded parity panel per target that has points (energy,
    forces, stress, magnetic moments; a 2 x 2 grid when all four do).

    Returns the path, or None when there were no points (or matplotlib is missing).
    """
    plt = _pyplot()
    if plt is None:
        return None
    points = {name: metrics.parity_points(name) for name in PANELS}
    points = {k: (p.numpy(), t.numpy()) for k, (p, t) in points.items() if p.numel() > 0}
    if not points:
        return None
    results = metrics.results()
    columns = 2 if len(points) == 4 else len(points)
    rows = math.ceil(len(points) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4.6 * rows), squeeze=False)
    for ax, (name, (predicted, label)) in zip(axes.ravel(), points.items(), strict=False):
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
    for ax in axes.ravel()[len(points) :]:
        ax.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header (empty when the file does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else float("nan")
    except ValueError:
        return float("nan")


def fractional_epochs(steps: np.ndarray, epochs: np.ndarray, epoch_end_steps: dict[int, int]):
    """Epoch coordinate (0 = start, k = end of epoch k) of each logged step.

    Args:
        steps: (n,) global steps of the logged rows; epochs: (n,) their 1-based epochs.
        epoch_end_steps: epoch -> global step at its end (from the val rows of metrics.csv);
            an epoch missing there falls back to the epoch number itself.
    """
    out = np.empty(len(steps))
    for k, (step, epoch) in enumerate(zip(steps, epochs, strict=True)):
        end = epoch_end_steps.get(int(epoch))
        start = epoch_end_steps.get(int(epoch) - 1, 0)
        if end is None or end <= start:
            out[k] = float(epoch)
        else:
            out[k] = epoch - 1 + (step - start) / (end - start)
    return out


def epoch_means(log_rows: list[dict[str, str]]) -> tuple[list[int], list[float]]:
    """(epochs, mean training loss of each) from train_log.csv's rows, in order: each row's
    loss is its window's mean over the window's finite steps (its global steps since the row
    before, less ``skipped``), so they are weighted by those, as the printed epoch loss is."""
    sums: dict[int, list[float]] = {}
    before = 0.0
    for row in log_rows:
        step, loss = _number(row["global_step"]), _number(row["loss"])
        skipped = _number(row.get("skipped"))
        finite = step - before - (skipped if np.isfinite(skipped) else 0.0)
        before = step
        if np.isfinite(loss) and np.isfinite(finite) and finite > 0:
            total = sums.setdefault(int(_number(row["epoch"])), [0.0, 0.0])
            total[0], total[1] = total[0] + loss * finite, total[1] + finite
    epochs = sorted(sums)
    return epochs, [sums[e][0] / sums[e][1] for e in epochs]


def learning_curve_plot(run_dir: Path, path: Path) -> Path | None:
    """Write a PNG of the learning curve of the run in ``run_dir``: training loss (each
    logged step and its per-epoch mean, log scale) and validation MAE and R² of every target
    per epoch. Reads ``train_log.csv`` (global_step, epoch, loss, lr; one row per logged step)
    and the val rows of ``metrics.csv`` (epoch, split, global_step, <target>_mae, <target>_r2).

    Returns the path, or None when neither file has rows (or matplotlib is missing).
    """
    plt = _pyplot()
    log_rows = read_rows(run_dir / "train_log.csv")
    val_rows = [row for row in read_rows(run_dir / "metrics.csv") if row.get("split") == "val"]
    if plt is None or not (log_rows or val_rows):
        return None
    val_epochs = np.array([_number(row["epoch"]) for row in val_rows])
    ends = {int(_number(r["epoch"])): int(_number(r["global_step"])) for r in val_rows}
    figure, axes = plt.subplots(2, 3, figsize=(15, 8.4))
    ax = axes[0, 0]
    if log_rows:
        steps = np.array([_number(row["global_step"]) for row in log_rows])
        epochs = np.array([_number(row["epoch"]) for row in log_rows])
        loss = np.array([_number(row["loss"]) for row in log_rows])
        finite = np.isfinite(loss) & (loss > 0)
        x = fractional_epochs(steps[finite], epochs[finite], ends)
        ax.plot(x, loss[finite], ".", markersize=2, alpha=0.4, label="logged steps")
        per_epoch, means = epoch_means(log_rows)
        ax.plot(per_epoch, means, "o-", label="epoch mean (plotted at epoch end)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_title("training loss")
    for ax, (target, (label, _)) in zip(axes.ravel()[1:5], REPORTED.items(), strict=True):
        mae = np.array([_number(row.get(f"{target}_mae")) for row in val_rows])
        if np.isfinite(mae).any():
            ax.plot(val_epochs, mae, "o-")
        ax.set_xlabel("epoch")
        ax.set_title(f"validation {label}")
    ax = axes[1, 2]
    for target in REPORTED:
        r2 = np.array([_number(row.get(f"{target}_r2")) for row in val_rows])
        if np.isfinite(r2).any():
            ax.plot(val_epochs, np.clip(r2, -1.0, 1.0), "o-", label=target)
    ax.axhline(0.0, color="k", linewidth=0.6)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("epoch")
    ax.set_title("validation R² (clipped to [-1, 1])")
    if ax.get_lines()[1:]:
        ax.legend(fontsize=8)
    figure.suptitle(f"learning curve: {run_dir}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
