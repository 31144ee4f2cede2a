"""Model selection on validation: the best-on-validation model file kept beside the last, and
early stopping after ``patience`` epochs without improvement.

The score of an epoch is one validation metric (``metric``, e.g. "energy_mae" in meV/atom or
"forces_mae" in meV/Å; lower is better) or "loss": the sum of the energy, forces, stress and
magmoms MAE weighted by the loss prefactors, each MAE in the unit the loss measures it in
(eV/atom, eV/Å, GPa, μB), as the prefactors are meant: the paper's 2, 1.5, 0.1, 0.1 put a
0.03 eV/atom, 0.07 eV/Å, 0.3 GPa, 0.03 μB model at 0.06 + 0.105 + 0.03 + 0.003 (energy and
forces in the reported meV would make stress and magnetic moments count a thousand times less
than the loss weighs them). ``best_model.txt`` names the score and its definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastchgnet.files import atomic_write_bytes
from fastchgnet.train.metrics import REPORTED

#: validation metrics a score may name (see train.metrics.MetricSums.results)
METRICS = ("loss", "energy_mae", "forces_mae", "stress_mae", "magmoms_mae")
#: unit of each target's MAE as reported (metrics.csv) and as the loss measures it
UNITS = {"energy": "meV/atom", "forces": "meV/Å", "stress": "GPa", "magmoms": "μB"}
LOSS_UNITS = {"energy": "eV/atom", "forces": "eV/Å", "stress": "GPa", "magmoms": "μB"}


def validation_score(results: dict[str, float], metric: str, weights: dict[str, float]) -> float:
    """The number to minimise from one validation ``results`` dict; NaN when it is absent.

    Args:
        results: ``{"energy_mae": ..., ...}`` of an evaluation.
        metric: one of ``METRICS``.
        weights: loss prefactors by target name (for "loss": each MAE in the loss's unit,
            eV/atom, eV/Å, GPa, μB, times its prefactor, summed).
    """
    if metric not in METRICS:
        raise ValueError(f"selection metric {metric!r}: use one of {METRICS}")
    if metric != "loss":
        return float(results.get(metric, math.nan))
    parts = [
        w * results[f"{t}_mae"] / REPORTED[t][1]  # reported (meV for e, f) -> the loss's unit
        for t, w in weights.items()
        if w and f"{t}_mae" in results
    ]
    return float(sum(parts)) if parts else math.nan


def score_definition(metric: str, weights: dict[str, float]) -> str:
    """What a score of ``metric`` is, in words and units, for ``best_model.txt``."""
    if metric != "loss":
        target = metric.removesuffix("_mae")
        return f"{target} MAE in {UNITS[target]}"
    terms = [f"{w:g} x {t} MAE ({LOSS_UNITS[t]})" for t, w in weights.items() if w]
    return "loss prefactor-weighted MAE in the loss's units: " + " + ".join(terms)


@dataclass
class BestTracker:
    """Keeps the best score seen and counts epochs since it improved (by more than
    ``min_delta``). ``patience`` > 0: ``should_stop`` once that many epochs in a row did not
    improve."""

    patience: int = 0
    min_delta: float = 0.0
    best: float = math.inf
    best_epoch: int = 0
    stale: int = 0
    history: list[float] = field(default_factory=list)

    def update(self, epoch: int, score: float) -> bool:
        """Record ``score`` of ``epoch``; True when it is a new best (NaN never is)."""
        self.history.append(score)
        if not math.isnan(score) and score < self.best - self.min_delta:
            self.best, self.best_epoch, self.stale = score, epoch, 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        """Whether early stopping ends the run now."""
        return self.patience > 0 and self.stale >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def save_best(
    model: Any, out_dir: Path, epoch: int, score: float, metric: str, definition: str = ""
) -> Path:
    """Write ``model`` as ``best_model.pt`` (our model file) with a note of why (the score and
    its ``definition``, ``score_definition``'s), beside the run's last ``model.pt``."""
    path = out_dir / "best_model.pt"
    model.save(path)
    note = f"epoch {epoch}: validation {metric} {score:.6g}"
    note += f" ({definition})\n" if definition else "\n"
    atomic_write_bytes(out_dir / "best_model.txt", note.encode())
    return path
