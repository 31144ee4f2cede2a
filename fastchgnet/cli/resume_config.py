"""The configuration of a ``--resume``: the checkpoint's, changed only where the command line
says so (``--set``) or the ``--config`` file sets a key to another value, and refused where a
change would break the continuation (the batches and the model behind the checkpoint).

A file's key counts only where the file sets it (not a default), so a run started with
``--set x=y`` over a file that does not name ``x`` resumes with the same file as it was.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fastchgnet.train.config import TrainConfig, read_table

#: Settings a resume keeps: the checkpoint's batches and model depend on them (a changed
#: data.batch_size re-planned the epochs behind the checkpoint's step: a 2-rank run resumed at
#: step 90 of 171 ended at 119, with no word), except how data is read
RESUME_KEEPS = {"data": {"loader_workers", "convert_workers", "cache_dir"}, "model": set()}


def file_changes(path: str | Path, stored: dict[str, Any]) -> dict[str, Any]:
    """The settings the config file at ``path`` gives explicitly (section -> key -> value,
    as ``TrainConfig`` reads them; a table such as ``model.architecture`` key by key) that
    differ from ``stored`` (a checkpoint's ``TrainConfig.to_dict()``)."""
    raw = read_table(path)
    return _given_changes(raw, TrainConfig.from_dict(raw).to_dict(), stored)


def _given_changes(raw: dict[str, Any], read: dict[str, Any], stored: dict[str, Any]) -> dict:
    """The values of ``read`` (``raw`` normalised) at the keys ``raw`` gives that differ
    from ``stored``; a table both sides hold is compared by the keys ``raw`` gives in it (a
    key the file leaves out keeps the checkpoint's value, not a default)."""
    changes: dict[str, Any] = {}
    for key, given in raw.items():
        new, old = read.get(key), stored.get(key)
        if all(isinstance(value, dict) for value in (given, new, old)):
            inner = _given_changes(given, new, old)
            if inner:
                changes[key] = inner
        elif new != old:
            changes[key] = new
    return changes


def with_changes(stored: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``stored`` (a config dict) with ``changes`` (``file_changes``) put in, table by table."""
    merged = dict(stored)
    for key, value in changes.items():
        old = stored.get(key)
        both = isinstance(value, dict) and isinstance(old, dict)
        merged[key] = with_changes(old, value) if both else value
    return merged


def check_resume_changes(stored: dict, resumed: dict, source: str = "--set") -> None:
    """ValueError (one line) where ``source`` (``--set`` or ``--config FILE``) changes a
    setting the run's batches or model depend on (``RESUME_KEEPS``: data and model, how
    data is read aside), naming the key (a table's differing keys, e.g.
    ``model.architecture.atom_fea_dim``), both values and the way out; a changed optimiser or
    loss setting is said on stderr (the schedule is recomputed from the checkpoint's step),
    and so is a run setting a file changes (a --set one is on the command line already)."""
    for section, free in RESUME_KEEPS.items():
        for key, value in resumed[section].items():
            old = stored[section].get(key)
            if key in free or value == old:
                continue
            name, old, value = _first_difference(f"{section}.{key}", old, value)
            cure = " (repeat the run's own --set, or leave the key out)" * (source != "--set")
            raise ValueError(
                f"--resume: {name} was {old!r}, {source} gives {value!r}: a resume continues "
                f"the same batches and model{cure}; for another run, give a new run.out_dir "
                "(model.init can start it from a checkpoint)"
            )
    changed = [
        f"{section}.{key}"
        for section in ("optim", "loss")
        for key, value in resumed[section].items()
        if value != stored[section].get(key)
    ]
    if changed:
        print(f"--resume: {', '.join(changed)} changed by {source}: the schedule and loss "
              "follow the new values from the checkpoint's step on", file=sys.stderr)  # fmt: skip
    run = [f"run.{key}" for key, value in resumed["run"].items() if value != stored["run"].get(key)]
    if run and source != "--set":  # a --set is said on the command line itself
        print(f"--resume: {', '.join(run)} changed by {source}: applied", file=sys.stderr)


def _first_difference(name: str, old: object, new: object) -> tuple[str, object, object]:
    """The first key where two tables differ, as ``name.key`` with its two values (``name``
    and the values themselves where they are not both tables)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in dict.fromkeys([*old, *new]):
            if old.get(key) != new.get(key):
                return _first_difference(f"{name}.{key}", old.get(key), new.get(key))
    return name, old, new
