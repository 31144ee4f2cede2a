"""The labels of compat ``StructureData``: the shapes chgnet documents, missing labels as
chgnet masks them, and the structures training will skip, reported by their index.

chgnet's ``StructureData`` takes per structure: energy eV/atom (scalar), forces (n, 3) eV/Å,
stress (3, 3) VASP kBar, magmoms (n,) or (n, 1) μB. Its Trainer masks NaN labels
(``allow_missing_labels``): a NaN force or stress entry, a magmom list with a NaN. Our
training masks a missing label per structure, so an all-NaN forces or stress label and a
magmom list with any NaN are missing here; a label only partly NaN cannot be masked and its
structure is skipped (and reported).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: structures a report names one by one (the rest are counted)
SHOWN = 3


def checked_stresses(stresses: Sequence[Any] | None) -> Sequence[Any] | None:
    """``stresses`` as given, once every entry is None or of shape (3, 3) (VASP kBar).

    Raises:
        ValueError: naming the first structure (by index) whose stress has another shape: a
            Voigt (6,) vector's order is not certain (chgnet itself fails on one), so it is
            not guessed.
    """
    if stresses is None:
        return None
    for index, stress in enumerate(stresses):
        shape = None if stress is None else np.shape(stress)
        if shape is not None and shape != (3, 3):
            voigt = " (a Voigt vector: give the full tensor, its order is not certain)"
            raise ValueError(
                f"StructureData: stresses[{index}] has shape {shape}, expected (3, 3) in VASP "
                f"kBar{voigt if shape == (6,) else ''}"
            )
    return stresses


def flat_magmoms(magmoms: Sequence[Any] | None) -> list[Any] | None:
    """``magmoms`` with each (n, 1) entry (chgnet's documented shape) made (n,); other
    entries (None, (n,), wrong shapes that the checks report) as given."""
    if magmoms is None:
        return None
    flat = []
    for magmom in magmoms:
        shape = None if magmom is None else np.shape(magmom)
        flat.append(
            np.reshape(magmom, -1) if shape and len(shape) == 2 and shape[1] == 1 else magmom
        )
    return flat


def present(label: Any, where: str, *, any_nan: bool = False) -> np.ndarray | None:
    """float64 array of one structure's ``label`` (``where``: its name, as "forces[3]"), or
    None where it is missing: None, all NaN, or (``any_nan``: magmoms, as chgnet drops a
    structure's magmoms with any NaN) any NaN.

    Raises:
        ValueError: naming ``where``, for a label that is not a numeric array (ragged rows).
    """
    if label is None:
        return None
    try:
        values = np.asarray(label, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"StructureData: {where} is not an array of numbers ({error})") from None
    nan = np.isnan(values)
    return None if values.size and (nan.any() if any_nan else nan.all()) else values


def problems_report(problems: dict[int, str], total: int, consequence: str) -> str:
    """Lines naming the first ``SHOWN`` of ``problems`` (StructureData index -> reason) and
    counting the rest, headed by their number out of ``total`` and ``consequence``."""
    lines = [f"{len(problems)} of {total} structure(s) {consequence}:"]
    lines += [f"  structure {index}: {reason}" for index, reason in list(problems.items())[:SHOWN]]
    if len(problems) > SHOWN:
        lines.append(f"  and {len(problems) - SHOWN} more")
    return "\n".join(lines)


def warn_problems(problems: dict[int, str], total: int) -> None:
    """Warn (``UserWarning``) of the structures ``Trainer.train`` will skip, if any."""
    if problems:
        consequence = "cannot be trained on; Trainer.train will skip them"
        warnings.warn(
            "StructureData: " + problems_report(problems, total, consequence), stacklevel=3
        )


def skipped_report(skipped_json: Path, total: int) -> str | None:
    """The structures conversion skipped (``skipped.json`` of the run's cache), by their
    StructureData index (the frame ids ``StructureData.frames`` gives, split-tagged), with
    the count and the file; None when it lists none."""
    skipped = json.loads(skipped_json.read_text()) if skipped_json.is_file() else []
    if not skipped:
        return None
    problems = {}
    for entry in skipped:
        split, _, index = str(entry.get("frame_id", "")).rpartition(":")
        key = int(index) if index.isdigit() else index
        problems[key] = f"{entry['reason']} ({split or 'data'} split)"
    consequence = f"skipped (listed with reasons in {skipped_json})"
    return "Trainer.train: " + problems_report(problems, total, consequence)
