"""A run's output folder (``run.out_dir``): whether it holds a run, and starting over there.

A new run into a folder that holds one would mix its checkpoints and metrics with the old
run's, so ``launcher/train.py`` and ``launcher/finetune.py`` refuse such a folder unless told
``--resume`` (continue it) or ``--overwrite`` (remove the old run's outputs first).
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: What a run leaves in its run.out_dir that a new run there would mix with its own
RUN_FILES = ("checkpoints", "metrics.csv", "model.pt")


def start_over(out: Path, overwrite: bool, remove: bool) -> None:
    """Make ``out`` ready for a new run: ValueError (one line) if it holds a run's files
    (``RUN_FILES``) and ``overwrite`` is off; with it, the checkpoints and metrics.csv go
    (only where ``remove``: one rank removes, every rank checks)."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if not found:
        return
    if not overwrite:
        raise ValueError(
            f"run.out_dir {out} holds a run ({', '.join(found)}): --resume continues it, "
            "--overwrite starts over there, or set another run.out_dir"
        )
    if remove:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / "metrics.csv").unlink(missing_ok=True)
