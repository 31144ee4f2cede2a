"""A run's output folder (``run.out_dir``): whether it holds a run, starting over there, the
logs a resume trims back to its checkpoint, and whether a run there is already complete.

A new run into a folder that holds one would mix its checkpoints and logs with the old run's,
so ``launcher/train.py`` and ``launcher/finetune.py`` refuse such a folder unless told
``--resume`` (continue it) or ``--overwrite`` (the old run's outputs go once the new run has
passed its checks and starts training; a refused run leaves them: ``start_over``). The data
caches (``cache/``, ``eval-*/``) are kept: they depend on the data, not on the run. While a
run goes on, its main process holds ``run_lock``: a second run there (``--resume`` or
``--overwrite`` too) is refused instead of writing beside it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
from pathlib import Path

from fastchgnet.data.cache import remove_tree
from fastchgnet.data.folder_lock import folder_lock
from fastchgnet.train.checkpoint import latest_progress
from fastchgnet.train.config import TrainConfig
from fastchgnet.train.metrics import write_csv

#: The file a run's main process holds an exclusive lock on while it runs (``run_lock``)
LOCK_FILE = ".run.lock"


def run_lock(out: Path, take: bool = True) -> contextlib.AbstractContextManager[None]:
    """Within the block this process holds ``out/.run.lock`` (``data.folder_lock``: an
    exclusive ``flock``, released when the process ends, killed or not), where ``take`` (the
    main rank).

    Raises:
        ValueError: one line naming the folder and the process (pid, host) of a run going on
            there: a second run (a --resume or --overwrite of a live run among them) would
            mix its checkpoints and logs with it, or delete them under it.
    """
    refusal = (
        f"run.out_dir {out}: a run is going on there ({{holder}}); wait for it to end, "
        "or give another run.out_dir"
    )
    return folder_lock(out, LOCK_FILE, refusal, take)


#: What a run leaves in its run.out_dir that a new run there would mix with its own
RUN_FILES = ("checkpoints", "metrics.csv", "model.pt", "train_log.csv")
#: Everything of a run that ``--overwrite`` removes (files and folders)
RUN_OUTPUTS = (
    *RUN_FILES,
    "best_model.pt",
    "best_model.txt",
    "model_last_weights.pt",
    "options_state.pt",
    "summary.json",
    "parity-val.png",
    "parity-test.png",
    "learning-curve.png",
    "finetune-report.csv",
    "tensorboard",
)


#: Where ``start_over`` puts an overwritten run's outputs until the new run starts training;
#: they are moved into ``MOVING`` first, which is renamed to it once all are in, so an aside
#: that a signal cut short is never taken for a whole one
PREVIOUS = ".overwritten-run"
MOVING = ".overwritten-run.moving"


def start_over(out: Path, overwrite: bool, remove: bool) -> None:
    """Make ``out`` ready for a new run: ValueError (one line) if it holds a run's files
    (``RUN_FILES``, or an overwritten run set aside) and ``overwrite`` is off; with it, the
    old run's outputs (``RUN_OUTPUTS``) are moved aside into ``out/PREVIOUS`` (only where
    ``remove``: one rank moves, every rank checks), where they stay until the new run has
    passed its checks and starts training (``discard_previous``) and from where they come back
    if it ends before (``settle_previous``): a refused run (a missing source, a bad freeze
    name) leaves the old run as it was. An aside left by a process killed before training
    comes back first."""
    if remove:
        restore_previous(out)
    found = [name for name in (*RUN_FILES, PREVIOUS, MOVING) if (out / name).exists()]
    if not found:
        return
    if not overwrite:
        raise ValueError(
            f"run.out_dir {out} holds a run ({', '.join(found)}): --resume continues it, "
            "--overwrite starts over there, or set another run.out_dir"
        )
    if remove:
        moving = out / MOVING
        moving.mkdir()
        for name in RUN_OUTPUTS:
            if (out / name).exists() or (out / name).is_symlink():
                (out / name).rename(moving / name)
        moving.rename(out / PREVIOUS)  # whole: from here a run file in ``out`` is the new run's


def discard_previous(out: Path) -> None:
    """Remove the overwritten run's outputs set aside in ``out`` (``start_over``), if any:
    the new run starts training (``train.run.train``, main rank)."""
    shutil.rmtree(out / PREVIOUS, ignore_errors=True)


def restore_previous(out: Path) -> None:
    """Put the overwritten run's outputs set aside in ``out`` back: an aside cut short while
    it was made (``MOVING``) always, a whole one where the new run wrote none of its own run
    files (it ended before training; else they are the new run's and the aside goes). Called
    before a new run or a resume in ``out`` (main rank), and after a run that failed."""
    moving, aside = out / MOVING, out / PREVIOUS
    if moving.is_dir():  # its files are not in ``out``: they went into it one by one
        _put_back(moving, out)
    if not aside.is_dir():
        return
    if any((out / name).exists() for name in RUN_FILES):  # the new run got going
        discard_previous(out)
        return
    _put_back(aside, out)


def _put_back(aside: Path, out: Path) -> None:
    """Move everything in ``aside`` back into ``out`` (replacing what the new run made of
    the same name, e.g. a tensorboard folder) and remove ``aside``."""
    for path in sorted(aside.iterdir()):
        remove_tree(out / path.name)
        path.rename(out / path.name)
    aside.rmdir()


def settle_previous(out: Path, succeeded: bool) -> None:
    """After a command that started over in ``out``: the overwritten run's outputs go where
    it ``succeeded`` and come back where it failed before training (``restore_previous``)."""
    if succeeded:
        discard_previous(out)
    else:
        restore_previous(out)


def trim_logs(out: Path, step: int) -> None:
    """Drop what a resume from the checkpoint at global ``step`` will write again: the rows of
    train_log.csv and metrics.csv past ``step``, and metrics.csv's test row at ``step`` (the
    run's end evaluates the test split again). Each file is replaced atomically."""
    for name in ("train_log.csv", "metrics.csv"):
        path = out / name
        if not path.is_file():
            continue
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
        kept = [row for row in rows if not _redone(row, step)]
        if len(kept) < len(rows):
            write_csv(path, kept, header=list(reader.fieldnames or []))


def _redone(row: dict[str, str], step: int) -> bool:
    """Whether a log ``row`` comes after the checkpoint at ``step`` (or is its test row)."""
    try:
        at = int(row["global_step"])
    except (KeyError, TypeError, ValueError):  # not a row of ours: keep it
        return False
    return at > step or (at == step and row.get("split") == "test")


def completed(out: Path, config: TrainConfig) -> str | None:
    """Why the run in ``out`` is already complete under ``config`` (a few words, e.g.
    "3/3 epochs"), or None when a resume has work to do. Complete: its end (test, model.pt,
    summary.json) ran at the newest checkpoint's step, and the epochs, early stopping or
    ``run.max_steps`` ended it there."""
    progress = latest_progress(out / "checkpoints")
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if progress is None or summary.get("global_step") != progress.global_step:
        return None
    epochs, limit = config.optim.epochs, config.run.max_steps
    if progress.epoch >= epochs:
        return f"{progress.epoch}/{epochs} epochs"
    if summary.get("early_stopped"):
        return f"stopped early after epoch {progress.epoch} of {epochs}"
    if limit and progress.global_step >= limit:
        return f"step {progress.global_step}, run.max_steps={limit}"
    return None
