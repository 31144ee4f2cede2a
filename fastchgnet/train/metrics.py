"""Evaluation metrics: MAE and R² per target, summed over batches and ranks; table and CSV.

Units of the MAE: energy meV/atom, forces meV/Å (per Cartesian component), stress GPa (per
tensor component), magnetic moments μB (per atom). R² = 1 - SSE / SST over the same entries.
Only labelled entries count (the label masks select them).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from fastchgnet.data.labels import LabelBatch
from fastchgnet.files import atomic_write_bytes
from fastchgnet.train.collectives import all_gather_objects, all_reduce

#: target -> (column label, factor from our unit to the reported unit)
REPORTED: dict[str, tuple[str, float]] = {
    "energy": ("e MAE (meV/atom)", 1000.0),
    "forces": ("f MAE (meV/Å)", 1000.0),
    "stress": ("s MAE (GPa)", 1.0),
    "magmoms": ("m MAE (μB)", 1.0),
}
#: sums kept per target: count, |error|, error², label, label²
N_SUMS = 5


def _pairs(prediction: object, labels: LabelBatch) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """target -> (predicted, label, mask) flattened per entry, float64, on the prediction's
    device; fixed shapes (no boolean selection), so nothing waits for the host."""
    out = {}
    for name in REPORTED:
        predicted = getattr(prediction, name)
        if predicted is None:
            continue
        target = getattr(labels, name).to(predicted.device)
        mask = getattr(labels, f"{name}_mask").to(predicted.device)
        mask = mask.reshape(mask.shape + (1,) * (predicted.dim() - 1)).expand_as(predicted)
        out[name] = (
            predicted.detach().reshape(-1).double(),
            target.reshape(-1).double(),
            mask.reshape(-1),
        )
    return out


@dataclass
class MetricSums:
    """Running sums per target, (4, N_SUMS) float64 on the predictions' device, reducible
    across ranks by one all-reduce; plus (prediction, label) pairs of every target kept for
    parity plots (up to ``keep`` entries each, selected on the host at the end)."""

    sums: Tensor = field(
        default_factory=lambda: torch.zeros(len(REPORTED), N_SUMS, dtype=torch.float64)
    )
    parity: dict[str, list[Tensor]] = field(default_factory=lambda: {k: [] for k in REPORTED})
    keep: int = 20000

    @classmethod
    def on(cls, device: torch.device) -> MetricSums:
        """Empty sums on ``device`` (where the predictions will be)."""
        return cls(sums=torch.zeros(len(REPORTED), N_SUMS, dtype=torch.float64, device=device))

    def add(self, prediction: object, labels: LabelBatch) -> None:
        """Add one batch's labelled entries (padding and missing labels are masked)."""
        for name, (predicted, target, mask) in _pairs(prediction, labels).items():
            if self.sums.device != predicted.device:
                self.sums = self.sums.to(predicted.device)
            row = list(REPORTED).index(name)
            zero = torch.zeros_like(predicted)
            error = torch.where(mask, predicted - target, zero)
            target = torch.where(mask, target, zero)
            self.sums[row] += torch.stack(
                [
                    mask.sum().double(),
                    error.abs().sum(),
                    (error**2).sum(),
                    target.sum(),
                    (target**2).sum(),
                ]
            )
            if sum(p.shape[1] for p in self.parity[name]) < self.keep:
                self.parity[name].append(torch.stack([predicted, target, mask.double()]))

    def all_reduce(self) -> None:
        """Sum across ranks (no-op without a process group): the sums in one all-reduce on
        the group's device, the parity points gathered (on the host; evaluation's end)."""
        self.sums = all_reduce(self.sums)
        selected = {name: self._selected(name) for name in self.parity}
        gathered = all_gather_objects(selected)
        self.parity = {
            k: [torch.cat([part[k], part[k].new_ones(1, part[k].shape[1])]) for part in gathered]
            for k in selected
        }

    def _selected(self, name: str) -> Tensor:
        """(2, n) predicted and label rows of the labelled entries kept, on the CPU."""
        if not self.parity[name]:
            return torch.zeros(2, 0, dtype=torch.float64)
        both = torch.cat(self.parity[name], dim=1).cpu()
        return both[:2, both[2] > 0]

    def results(self) -> dict[str, float]:
        """``{"energy_mae": meV/atom, "energy_r2": ..., ...}`` for targets with labels."""
        out, sums = {}, self.sums.tolist()
        for row, (name, (_, factor)) in enumerate(REPORTED.items()):
            count, abs_sum, sq_sum, y_sum, y2_sum = sums[row]
            if count == 0:
                continue
            total = y2_sum - y_sum**2 / count
            out[f"{name}_mae"] = abs_sum / count * factor
            out[f"{name}_r2"] = 1.0 - sq_sum / total if total > 0 else float("nan")
        return out

    def parity_points(self, name: str) -> tuple[Tensor, Tensor]:
        """(predicted, label) 1-D CPU tensors of the labelled ``name`` entries kept so far."""
        both = self._selected(name)
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


def write_csv(path: Path, rows: list[dict[str, object]], header: list[str] | None = None) -> None:
    """Replace ``path`` with a CSV of ``rows`` under ``header`` (default: the first row's
    keys; with neither, an empty file), atomically: a reader sees the old file or the new
    one, never a part."""
    text = io.StringIO()
    header = header if header is not None else list(rows[0]) if rows else []
    writer = csv.DictWriter(text, fieldnames=header)
    if header:
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())
