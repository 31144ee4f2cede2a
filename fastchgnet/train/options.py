"""The training options peers have, for ``train.run``: EMA of the weights (evaluated and saved),
the best-on-validation model kept beside the last, early stopping with a patience.

``run.train`` calls this in four marked places: after each step (``after_step``), around each
evaluation (``evaluation``), at each epoch end (``end_epoch``: True stops the run) and for the
final model file (``save_final``). Their state (EMA shadow, best score) is written at every
epoch end to ``<out>/options_state.pt`` and read back on resume, so a resumed run continues
from the last epoch boundary (mid-epoch EMA updates since then are not replayed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from fastchgnet.files import read_checksummed, write_checksummed
from fastchgnet.train.config import TrainConfig
from fastchgnet.train.ema import WeightEMA
from fastchgnet.train.selection import BestTracker, save_best, validation_score

STATE_FILE = "options_state.pt"
STATE_KIND = "fastchgnet-training-options"


class TrainingOptions:
    """EMA, best model and early stopping of one run (see the module docstring)."""

    def __init__(self, config: TrainConfig, model: nn.Module, out_dir: Path, is_main: bool):
        optim = config.optim
        self.ema = WeightEMA(model, optim.ema_decay) if optim.ema_decay > 0 else None
        self.tracker = BestTracker(patience=optim.early_stopping_patience)
        self.metric, self.weights = optim.select_metric, config.loss.weights()
        self.out_dir, self.is_main = out_dir, is_main

    def after_step(self, model: nn.Module) -> None:
        """Fold the new weights into the EMA."""
        if self.ema is not None:
            self.ema.update(model)

    @contextlib.contextmanager
    def evaluation(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` with the weights to evaluate and save: the EMA's when on."""
        if self.ema is None:
            yield model
        else:
            with self.ema.applied(model):
                yield model

    def end_epoch(self, epoch: int, results: dict[str, float], model: nn.Module) -> bool:
        """Score the epoch's validation ``results``; write ``best_model.pt`` on a new best.
        Returns True when early stopping ends the run."""
        score = validation_score(results, self.metric, self.weights)
        if self.tracker.update(epoch, score) and self.is_main:
            with self.evaluation(model):
                save_best(model, self.out_dir, epoch, score, self.metric)
        if self.is_main:
            write_checksummed(self.out_dir / STATE_FILE, self.state_dict(), STATE_KIND, 1)
        return self.tracker.should_stop

    def save_final(self, model: Any, out_dir: Path) -> None:
        """``model.pt`` (EMA weights when on; the raw ones then go to model_last_weights.pt)."""
        if self.ema is not None:
            model.save(out_dir / "model_last_weights.pt")
        with self.evaluation(model):
            model.save(out_dir / "model.pt")

    def state_dict(self) -> dict[str, Any]:
        ema = None if self.ema is None else self.ema.state_dict()
        return {"ema": ema, "tracker": self.tracker.state_dict()}

    def resume(self) -> None:
        """Read the state written at the last epoch end, if any."""
        path = self.out_dir / STATE_FILE
        if not path.is_file():
            return
        _, state = read_checksummed(path, STATE_KIND, (1,))
        self.tracker.load_state_dict(state["tracker"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
