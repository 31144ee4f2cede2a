"""Evaluation metrics: MAE and R² per target, summed over batches and ranks; table and CSV.

Units of the MAE: energy meV/atom, forces meV/Å (per Cartesian component), stress GPa (per
tensor component), magnetic moments μB (per atom). R² = 1 - SSE / SST over the same entries.
Only labelled entries count (the label masks select them).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from fastchgnet.data.labels import LabelBatch

#: target -> (column label, factor from our unit to the reported unit)
REPORTED: dict[str, tuple[str, float]] = {
    "energy": ("e MAE (meV/atom)", 1000.0),
    "forces": ("f MAE (meV/Å)", 1000.0),
    "stress": ("s MAE (GPa)", 1.0),
    "magmoms": ("m MAE (μB)", 1.0),
}
#: sums kept per target: count, |error|, error², label, label²
N_SUMS = 5


def _pairs(prediction: object, labels: LabelBatch) -> dict[str, tuple[Tensor, Tensor]]:
    """target -> (predicted, label) of the labelled entries, flattened, float64."""
    raw = {
        "energy": (prediction.energy, labels.energy, labels.energy_mask),
        "forces": (prediction.forces, labels.forces, labels.forces_mask),
        "stress": (prediction.stress, labels.stress, labels.stress_mask),
        "magmoms": (prediction.magmoms, labels.magmoms, labels.magmoms_mask),
    }
    out = {}
    for name, (predicted, target, mask) in raw.items():
        if predicted is None:
            continue
        out[name] = (
            predicted.detach()[mask].reshape(-1).double(),
            target.to(predicted.device)[mask].reshape(-1).double(),
        )
    return out


@dataclass
class MetricSums:
    """Running sums per target, (4, N_SUMS) float64, reducible across ranks by one all-reduce;
    plus the (prediction, label) pairs of every target kept for parity plots (up to ``keep``)."""

    sums: Tensor = field(
        default_factory=lambda: torch.zeros(len(REPORTED), N_SUMS, dtype=torch.float64)
    )
    parity: dict[str, list[Tensor]] = field(
        default_factory=lambda: {"energy": [], "forces": [], "stress": [], "magmoms": []}
    )
    keep: int = 20000

    def add(self, prediction: object, labels: LabelBatch) -> None:
        """Add one batch's labelled entries."""
        for row, (name, (predicted, target)) in enumerate(_pairs(prediction, labels).items()):
            row = list(REPORTED).index(name)
            error = (predicted - target).cpu()
            target = target.cpu()
            self.sums[row] += torch.stack(
                [
                    torch.tensor(float(error.numel()), dtype=torch.float64),
                    error.abs().sum(),
                    (error**2).sum(),
                    target.sum(),
                    (target**2).sum(),
                ]
            )
            if name in self.parity and sum(p.shape[1] for p in self.parity[name]) < self.keep:
                self.parity[name].append(torch.stack([predicted.cpu(), target]))

    def all_reduce(self) -> None:
        """Sum across ranks (no-op without a process group)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums)
            gathered: list[dict] = [{} for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, self.parity)
            self.parity = {k: [p for part in gathered for p in part[k]] for k in self.parity}

    def results(self) -> dict[str, float]:
        """``{"energy_mae": meV/atom, "energy_r2": ..., ...}`` for targets with labels."""
        out = {}
        for row, (name, (_, factor)) in enumerate(REPORTED.items()):
            count, abs_sum, sq_sum, y_sum, y2_sum = self.sums[row].tolist()
            if count == 0:
                continue
            total = y2_sum - y_sum**2 / count
            out[f"{name}_mae"] = abs_sum / count * factor
            out[f"{name}_r2"] = 1.0 - sq_sum / total if total > 0 else float("nan")
        return out

    def parity_points(self, name: str) -> tuple[Tensor, Tensor]:
        """(predicted, label) 1-D tensors of ``name`` (a target in ``REPORTED``) kept so far."""
        if not self.parity[name]:
            return torch.zeros(0), torch.zeros(0)
        both = torch.cat(self.parity[name], dim=1)
        return both[0], both[1]


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A plain text table: one row per run/split name, MAE (and R²) per target."""
    header = ["", *(label for label, _ in REPORTED.values()), "R² e", "R² f", "R² s", "R² m"]
    lines = [header]
    for name, result in rows.items():
        cells = [name]
        for target in REPORTED:
            value = result.get(f"{target}_mae")
            cells.append("-" if value is None else f"{value:.4g}")
        for target in REPORTED:
            value = result.get(f"{target}_r2")
            cells.append("-" if value is None else f"{value:.4f}")
        lines.append(cells)
    widths = [max(len(row[k]) for row in lines) for k in range(len(header))]
    text = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in lines]
    return "\n".join(text)


def append_csv(path: Path, row: dict[str, object]) -> None:
    """Append ``row`` to a CSV file, writing the header when the file is new."""
    new = not path.is_file()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
