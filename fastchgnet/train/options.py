"""The training options peers have, for ``train.run``: EMA of the weights (evaluated and saved),
the best-on-validation model kept beside the last, early stopping with a patience.

``run.train`` calls this in four marked places: after each step (``after_step``), around each
evaluation (``evaluation``), at each epoch end (``end_epoch``: True stops the run) and for the
final model file (``save_final``). Their state (EMA shadow, best score, epochs without a
better one) goes into every checkpoint (``state_dict``, rank 0's file) and is restored on
resume (``load_state_dict``), so a run resumed mid-epoch continues the EMA from the
checkpoint's step: model.pt, best_model.pt and metrics equal an uninterrupted run's. Runs
written before that kept it in ``<out>/options_state.pt`` at epoch ends, which ``resume``
still reads for their checkpoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from fastchgnet.files import read_checksummed
from fastchgnet.train.config import TrainConfig
from fastchgnet.train.ema import WeightEMA
from fastchgnet.train.progress import log
from fastchgnet.train.selection import (
    BestTracker,
    save_best,
    score_definition,
    validation_score,
)

#: where runs written before checkpoints held the options' state kept it (read on resume)
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
        absent = self.metric != "loss" and self.metric not in results  # no such labels
        if results and absent and self.is_main and not self.tracker.history:
            log(f"warning: validation has no {self.metric}: no best_model.pt is selected")
        if self.tracker.update(epoch, score) and self.is_main:
            with self.evaluation(model):
                definition = score_definition(self.metric, self.weights)
                save_best(model, self.out_dir, epoch, score, self.metric, definition)
        return self.tracker.should_stop

    def save_final(self, model: Any, out_dir: Path) -> None:
        """``model.pt`` (EMA weights when on; the raw ones then go to model_last_weights.pt)."""
        if self.ema is not None:
            model.save(out_dir / "model_last_weights.pt")
        with self.evaluation(model):
            model.save(out_dir / "model.pt")

    def state_dict(self) -> dict[str, Any]:
        """EMA (its shadow weights copied to the CPU) and best-score state, for checkpoints."""
        ema = None
        if self.ema is not None:
            ema = self.ema.state_dict()
            ema["shadow"] = {k: v.detach().cpu() for k, v in self.ema.shadow.items()}
        return {"ema": ema, "tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` gave (an EMA state is ignored when EMA is off now)."""
        self.tracker.load_state_dict(state["tracker"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])

    def resume(self, state: dict[str, Any] | None, model: nn.Module) -> None:
        """Restore a checkpoint's ``state`` (``state_dict``); None (a checkpoint written
        before it held one): the ``options_state.pt`` of the last epoch end, if any. With EMA
        on and no EMA state saved (none yet, or EMA turned on for the resume), the average
        starts from ``model``'s resumed weights, not from the weights it was built with."""
        if state is None:
            path = self.out_dir / STATE_FILE
            if path.is_file():
                _, state = read_checksummed(path, STATE_KIND, (1,))
        if state is not None:
            self.load_state_dict(state)
        if self.ema is not None and (state is None or state["ema"] is None):
            self.ema = WeightEMA(model, self.ema.decay)
