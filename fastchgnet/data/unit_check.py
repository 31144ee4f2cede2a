"""A wrong unit for a whole source: ``convert`` refuses a source when a large share of the
frames that carry a label were beyond that label's plausibility limit
(``frame.implausible_labels``).

A unit (``--labels '{"stress_unit": ...}'``, ``energy_per_atom``, MPtrj's ``energy_key``) is
set per file, so when many of a file's frames fail the same label's magnitude check, the unit
is wrong for every frame, and the frames that passed are wrong too (GPa numbers read as
eV/Å^3 are 160x too large: some stay under 1000 GPa). Conversion skipped the failing frames
and trained on the rest; it now stops with one line naming the source, the label, the count,
the unit the label was read in and the setting to check.

The threshold: more than ``REFUSE_SHARE`` (a quarter) of the frames that carry the label,
and at least ``MIN_FRAMES`` (5) such frames. The limits (1000 GPa, about three times the
pressure at the Earth's centre; 50 eV/atom, several times any binding energy) are far beyond
correct DFT labels, which cross them in single broken frames, not in a quarter of a file; a
wrong unit or a total energy read as per atom, in a quarter or more of them. A few frames
beyond are skipped and listed as before. Frames whose magnitudes are all large but under
the limits are not judged: they cannot be told from a high-pressure data set.

VASP runs are not judged: their units are vasprun.xml's, not a setting, and their frames
beyond the limits are broken ionic steps, each skipped. Forces and magnetic moments have no
plausibility limit, so they are not counted either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastchgnet.data.cache import remove_tree
from fastchgnet.data.frame import Frame, ImplausibleLabels
from fastchgnet.data.shards import SHARD, converter_paths

#: a source is refused when more than this share of the frames with a label are beyond its limit
REFUSE_SHARE = 0.25
#: ... and at least this many frames carry the label
MIN_FRAMES = 5
#: the key of a shard.json that holds its frames' ``LabelTally.record()``
UNIT_RECORD = "label_magnitudes"
#: label -> (Frame field, unit of the magnitudes)
LABELS = {"energy": ("energy_per_atom", "eV/atom"), "stress": ("stress", "GPa")}


class LabelTally:
    """Per label: frames that carry it, how many of them were beyond its limit, the largest
    magnitude among those and the limit. ``record()`` goes into each shard.json, so that a
    resumed conversion counts the shards it keeps (``merge``)."""

    def __init__(self) -> None:
        self.counts = {label: {"frames": 0, "beyond": 0, "largest": 0.0, "limit": 0.0}
                       for label in LABELS}  # fmt: skip

    def add(self, frame: Frame) -> None:
        """Count ``frame``: a label it carries, and whether that was beyond the limit (the
        frame's problem is ``ImplausibleLabels`` naming it)."""
        problem = frame.problem
        beyond = problem.beyond if isinstance(problem, ImplausibleLabels) else {}
        for label, (field, _) in LABELS.items():
            if getattr(frame, field) is None:
                continue
            counts = self.counts[label]
            counts["frames"] += 1
            if label in beyond:
                magnitude, limit = beyond[label]
                counts["beyond"] += 1
                counts["largest"] = max(counts["largest"], magnitude)
                counts["limit"] = limit

    def merge(self, record: Any) -> None:
        """Add a shard's ``record()`` (shard.json's; none in shards built before it was kept)."""
        if not isinstance(record, dict):
            return
        for label, counts in record.items():
            if label in self.counts and isinstance(counts, dict):
                mine = self.counts[label]
                mine["frames"] += int(counts.get("frames", 0))
                mine["beyond"] += int(counts.get("beyond", 0))
                mine["largest"] = max(mine["largest"], float(counts.get("largest", 0.0)))
                mine["limit"] = float(counts.get("limit", 0.0)) or mine["limit"]

    def record(self) -> dict[str, dict[str, float]]:
        return {label: dict(counts) for label, counts in self.counts.items()}


def refuse_wrong_units(tally: LabelTally, origin: dict | None, out: Path) -> None:
    """Raise ValueError (one line, see ``wrong_unit``) where the frames converted into ``out``
    point at a wrong unit, after removing what conversion wrote there (shards, settings.json,
    skipped.json): nothing trusts the cache, and a rerun with the right unit starts afresh."""
    problem = wrong_unit(tally, origin)
    if problem is None:
        return
    for shard in converter_paths(out, SHARD):
        remove_tree(shard)
    for name in ("settings.json", "skipped.json"):
        remove_tree(out / name)
    raise ValueError(problem)


def wrong_unit(tally: LabelTally, origin: dict | None) -> str | None:
    """The one-line refusal of a source whose label points at a wrong unit, or None."""
    sources = _sources(origin)
    if sources and all(reading.get("reader") == "vasp" for _, reading in sources):
        return None
    for label, (_, unit) in LABELS.items():
        counts = tally.counts[label]
        n, beyond = int(counts["frames"]), int(counts["beyond"])
        if n < MIN_FRAMES or beyond <= REFUSE_SHARE * n:
            continue
        names = ", ".join(name for name, _ in sources) or "the frames given"
        hints = [_hint(label, reading, origin) for _, reading in sources] or [
            _hint(label, {}, origin)
        ]
        read = "; ".join(dict.fromkeys(h[0] for h in hints if h[0]))
        check = "; ".join(dict.fromkeys(h[1] for h in hints if h[1]))
        return (
            f"{names}: {label} of {beyond} of {n} frames beyond the plausibility limit of "
            f"{counts['limit']:.4g} {unit} (largest {counts['largest']:.4g} {unit}), {read}: a "
            f"unit is per file, so the other {n - beyond} cannot be trusted either; {check}"
        )
    return None


def _sources(origin: dict | None) -> list[tuple[str, dict]]:
    """(name, reading) of each source file in ``origin``: ``data convert``'s one (named by
    its path), or a training run's (``data.source``, ``data.val_source``, ...: named
    ``data.source=PATH``)."""
    if not isinstance(origin, dict):
        return []
    if "reader" in origin:
        return [(str(origin.get("path", "source")), origin)]
    return [(f"{key}={part.get('path', '?')}", part) for key, part in origin.items()
            if isinstance(part, dict) and "reader" in part]  # fmt: skip


def _hint(label: str, reading: dict, origin: dict | None) -> tuple[str, str]:
    """How the label was read, and the setting to check, for the source's reader."""
    run = isinstance(origin, dict) and "reader" not in origin  # a training run's sources
    reader = reading.get("reader")
    if reader == "ase":
        labels = reading.get("labels", {})
        option = "data.labels.{}" if run else "--labels '{{\"{}\": ...}}'"
        if label == "stress":
            read = f"read in {labels.get('stress_unit')}"
            return read, f"check {option.format('stress_unit')} (eV/A^3, GPa or kBar)"
        kind = "per atom" if labels.get("energy_per_atom") else "a total"
        read = f"read from {labels.get('energy')!r} as {kind} in eV"
        return read, f"check {option.format('energy_per_atom')} and the energy's unit"
    if reader == "mptrj":
        if label == "stress":
            return "read in kBar (MPtrj's unit)", "check the file's stress unit"
        setting = "data.energy_key" if run else "--energy-key"
        return f"read from {reading.get('energy_key')!r}", f"check {setting} and the file"
    if reader is None:
        return f"taken in {LABELS[label][1]}", f"check the unit of the {label} labels given"
    return "", ""
