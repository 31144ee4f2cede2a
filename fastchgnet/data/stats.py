"""A dataset statistics report (``fastchgnet data stats SRC``): element counts, sizes, label
ranges and outliers, computed in one streaming pass over a source's frames (our units).

Frames that ``check_frame`` refuses (as conversion does: a ``Frame.problem``, elements beyond
Pu, non-finite labels, labels of the wrong shape, a stress that is not symmetric) are listed
as unusable and left out of every statistic. Graph problems that only a neighbour list finds
(isolated or overlapping atoms) are checked too with ``graphs`` (``data stats --graphs``:
conversion's own ``frame_graph``, a neighbour list per frame, so slower); without it they stay
for conversion to find.

Outliers: energies more than ``z_limit`` standard deviations from the mean energy per atom
(judged after the pass, from a kept (frame name, energy) list), any force component above
``max_force`` eV/Å, any stress component above ``max_stress`` GPa.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from fastchgnet.data.convert import frame_graph
from fastchgnet.data.frame import Frame, check_frame
from fastchgnet.errors import StructureError

LABELS = ("energy_per_atom", "forces", "stress", "magmoms")
UNITS = {"energy_per_atom": "eV/atom", "forces": "eV/Å", "stress": "GPa", "magmoms": "μB"}


def dataset_stats(
    frames: Iterable[Frame], z_limit: float = 5.0, max_force: float = 50.0,
    max_stress: float = 100.0, graphs: tuple[float, float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One pass over ``frames``: counts, element counts, atoms per frame, per-label
    coverage/min/max/mean/std (forces and stress per component), outlier frame names, and the
    frames that ``check_frame`` refuses ("unusable"), which are not counted. With ``graphs``
    (atom and bond cutoffs, Å) each frame's crystal graph is built as conversion builds it,
    and the frames it refuses are unusable too."""
    elements: Counter[str] = Counter()
    sizes: list[int] = []
    sums = {k: [0, 0.0, 0.0, np.inf, -np.inf, 0] for k in LABELS}  # n, sum, sum2, min, max, frames
    energies: list[tuple[str, float]] = []
    outliers: list[str] = []
    unusable: list[str] = []
    for frame in frames:
        try:
            if graphs is None:
                check_frame(frame)  # the check conversion makes: it skips what this refuses
            else:
                frame_graph(frame, *graphs)  # every check conversion makes
        except StructureError as error:
            unusable.append(str(error))
            continue
        sizes.append(len(frame.structure))
        elements.update(site.specie.symbol for site in frame.structure)
        for key in LABELS:
            value = getattr(frame, key)
            if value is None:
                continue
            values = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
            entry = sums[key]
            entry[0] += values.size
            entry[1] += float(values.sum())
            entry[2] += float((values**2).sum())
            entry[3] = min(entry[3], float(values.min()))
            entry[4] = max(entry[4], float(values.max()))
            entry[5] += 1
        if frame.energy_per_atom is not None:
            energies.append((frame.name, frame.energy_per_atom))
        if frame.forces is not None and np.abs(frame.forces).max() > max_force:
            outliers.append(f"{frame.name}: force {np.abs(frame.forces).max():.3g} eV/Å")
        if frame.stress is not None and np.abs(frame.stress).max() > max_stress:
            outliers.append(f"{frame.name}: stress {np.abs(frame.stress).max():.3g} GPa")
    labels = {}
    for key, (n, total, total2, low, high, n_frames) in sums.items():
        if n:
            mean = total / n
            std = float(np.sqrt(max(total2 / n - mean**2, 0.0)))
            labels[key] = {"frames": n_frames, "min": low, "max": high, "mean": mean, "std": std}
    if "energy_per_atom" in labels and labels["energy_per_atom"]["std"] > 0:
        mean, std = labels["energy_per_atom"]["mean"], labels["energy_per_atom"]["std"]
        outliers += [
            f"{name}: energy {e:.4g} eV/atom ({(e - mean) / std:+.1f} std)"
            for name, e in energies
            if abs(e - mean) > z_limit * std
        ]
    return {
        "frames": len(sizes),
        "atoms": {"min": min(sizes, default=0), "max": max(sizes, default=0),
                  "mean": float(np.mean(sizes)) if sizes else 0.0, "total": int(sum(sizes))},
        "elements": dict(elements.most_common()),
        "labels": labels,
        "outliers": outliers,
        "unusable": unusable,
    }  # fmt: skip


def format_stats(stats: dict[str, Any], top: int = 20) -> str:
    """The report as text (elements by atom count; outliers up to ``top``)."""
    atoms = stats["atoms"]
    lines = [
        f"{stats['frames']} frames, {atoms['total']} atoms "
        f"(per frame min {atoms['min']}, mean {atoms['mean']:.1f}, max {atoms['max']})",
        "elements (atoms): "
        + ", ".join(f"{el} {count}" for el, count in stats["elements"].items()),
    ]
    if stats["labels"]:
        lines.append(
            f"{'label':16s} {'frames':>7s} {'min':>10s} {'max':>10s} {'mean':>10s} {'std':>10s}"
        )
    elif stats["frames"]:
        lines.append(
            "no labels found (energy, forces, stress, magmoms) in any usable frame: nothing to "
            "train on (extxyz/ASE files: name the keys with --labels)"
        )
    for key, row in stats["labels"].items():
        lines.append(
            f"{key + ' ' + UNITS[key]:16s} {row['frames']:7d} {row['min']:10.4g} "
            f"{row['max']:10.4g} {row['mean']:10.4g} {row['std']:10.4g}"
        )
    outliers = stats["outliers"]
    lines.append(f"outliers: {len(outliers)}")
    lines += [f"  {line}" for line in outliers[:top]]
    unusable = stats.get("unusable", [])
    if unusable:
        lines.append(f"unusable (conversion skips them): {len(unusable)}")
        lines += [f"  {line}" for line in unusable[:top]]
    return "\n".join(lines)
