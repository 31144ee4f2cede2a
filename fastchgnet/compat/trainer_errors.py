"""What compat ``Trainer`` says when it cannot go on, in its own arguments' words: a misspelled
keyword (TypeError, as Python's), a chgnet option not offered (NotImplementedError), a value
our config refuses (named as the Trainer argument), and a Ctrl-C (what was kept, where, and how
to go on)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path

from fastchgnet.signals import Stopped
from fastchgnet.train.interrupt import Interrupted

#: chgnet Trainer's ``**kwargs`` it reads (the optimizer's, the scheduler's, CombinedLoss's)
CHGNET_KWARGS = ("delta", "weight_decay", "scheduler_params", "momentum")
#: of those, the ones compat Trainer maps (``momentum`` is chgnet's SGD's, not offered)
MAPPED_KWARGS = ("delta", "weight_decay", "scheduler_params")

#: our config's name of a setting (as its ValueError writes it) -> the Trainer argument
ARGUMENTS = {
    "config optim.epochs": "epochs",
    "config optim.lr": "learning_rate",
    "config optim.weight_decay": "weight_decay",
    "config optim.min_lr_ratio": "scheduler_params={'decay_fraction'}",
    "huber_delta": "delta",
    "loss prefactor energy": "energy_loss_ratio",
    "loss prefactor forces": "force_loss_ratio",
    "loss prefactor stress": "stress_loss_ratio",
    "loss prefactor magmoms": "mag_loss_ratio",
}


def unknown_keywords(given: Iterable[str], parameters: Iterable[str]) -> Exception | None:
    """The error for Trainer keywords ``given`` beyond its named ``parameters``: TypeError for
    one chgnet's Trainer does not take either (a misspelling: "did you mean 'epochs'?"),
    NotImplementedError for a chgnet option compat does not map; None when all are mapped."""
    extra = sorted(set(given) - set(MAPPED_KWARGS))
    if not extra:
        return None
    names = [*parameters, *MAPPED_KWARGS]
    unknown = [name for name in extra if name not in CHGNET_KWARGS]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return TypeError(f"Trainer() got an unexpected keyword argument {name!r}{hint}")
    return NotImplementedError(
        f"Trainer option(s) {extra} (chgnet's SGD optimizer) not supported in fastchgnet; "
        "use optimizer='Adam' or 'AdamW'"
    )


def argument_error(error: ValueError) -> ValueError:
    """``error`` from our config (``config optim.epochs=0: must be at least 1``) naming the
    Trainer argument instead (``Trainer(epochs=0): must be at least 1``); as it is when it
    names no setting a Trainer argument maps to."""
    text = str(error)
    if text == "every loss prefactor is zero: nothing to train":
        return ValueError("Trainer: every loss ratio is zero: nothing to train")
    for ours, argument in ARGUMENTS.items():
        match = re.fullmatch(rf"{re.escape(ours)}=(\S+?):? (.*)", text)
        if match:
            return ValueError(f"Trainer({argument}={match[1]}): {match[2]}")
    return error


class TrainerInterrupted(Interrupted):
    """``Trainer.train`` stopped by a signal: the message says what was kept (the checkpoint,
    the weights now in the model) and how to go on; a KeyboardInterrupt."""

    def __init__(self, stop: Interrupted, text: str) -> None:
        Stopped.__init__(self, stop.signum, text)
        self.where, self.checkpoint = stop.where, stop.checkpoint


def interrupted_message(stop: Interrupted, out: Path, checkpoint_file: Path | None) -> str:
    """One line for ``stop`` of a compat run in ``out``: the checkpoint kept and its file
    (``checkpoint_file``, whose weights the model now holds; None: no checkpoint, the model as
    before ``train``), and the command that continues the run."""
    head = f"Trainer.train interrupted {stop.where}".rstrip()
    if checkpoint_file is None:
        return (
            f"{head}: no checkpoint was written; the model keeps the weights it had before "
            "train(); call train() again to start over"
        )
    return (
        f"{head}: checkpoint at step {stop.checkpoint} kept in {checkpoint_file.parent}; the "
        f"model now holds its weights (CHGNet.from_file('{checkpoint_file}') reads them); "
        "continue the run with: fastchgnet train --resume --set "
        f"run.out_dir={out} (its model then in {out / 'model.pt'})"
    )
