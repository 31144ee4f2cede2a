"""Labelled frames from extxyz / ASE-db files as others write them: chosen key names, total or
per-atom energy, stress unit and sign named, streamed (one frame in memory at a time).

Units are converted here, once: energy -> eV/atom, forces eV/Å, stress -> GPa with CHGNet's
(= ASE's) sign, magnetic moments -> |μB|. A label is looked up by its key in the calculator
results, then ``atoms.info``/``atoms.arrays``, then an ASE-db row's key-value pairs and data.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fastchgnet.data.field_types import coerce_fields
from fastchgnet.data.frame import (
    MAX_ENERGY_PER_ATOM,
    MAX_STRESS_GPA,
    Frame,
    ase_material_id,
    implausible_labels,
    periodic_structure,
    unreadable_frame,
)
from fastchgnet.units import EV_PER_A3_TO_GPA

#: stress unit -> factor to GPa (before the sign)
STRESS_UNITS = {"eV/A^3": EV_PER_A3_TO_GPA, "GPa": 1.0, "kBar": 0.1}


@dataclass(frozen=True)
class AseLabels:
    """Where an extxyz/ASE-db file keeps its labels, and their units.

    ``energy``, ``forces``, ``stress``, ``magmoms``: key names ("" = the file has none);
    ``energy_per_atom``: the energy is per atom (eV/atom), else a total (eV).
    ``stress_unit``: "eV/A^3" (ASE), "GPa" or "kBar"; ``stress_sign``: "ase" (ASE's and
    CHGNet's (1/V) dE/dε) or "vasp" (the opposite sign: VASP's and MPtrj's).
    ``max_stress_gpa``, ``max_energy_per_atom``: a frame with a label beyond these magnitudes
    (after conversion) gets a problem (``frame.implausible_labels``; conversion skips it), as
    a wrong unit or a total/per-atom mix-up shows up this way.
    """

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"
    magmoms: str = "magmoms"
    energy_per_atom: bool = False
    stress_unit: Literal["eV/A^3", "GPa", "kBar"] = "eV/A^3"
    stress_sign: Literal["ase", "vasp"] = "ase"
    max_stress_gpa: float = MAX_STRESS_GPA
    max_energy_per_atom: float = MAX_ENERGY_PER_ATOM

    def __post_init__(self) -> None:
        coerce_fields(self)  # the run config's check: energy_per_atom="false" is refused

    @property
    def stress_factor(self) -> float:
        """Multiplies the file's stress into GPa with CHGNet's sign."""
        sign = -1.0 if self.stress_sign == "vasp" else 1.0
        return sign * STRESS_UNITS[self.stress_unit]


def labels_from_json(text: str) -> AseLabels:
    """``AseLabels`` from a JSON object (``--labels '{"energy": "E_dft"}'``).

    Raises:
        ValueError: not a JSON object, a key that ``AseLabels`` does not have, or a value of
            the wrong type (``--labels energy_per_atom='false': expected true or false``).
    """
    from dataclasses import fields

    from fastchgnet.errors import json_object

    data = json_object(text, f"--labels {text!r}")
    known = {f.name for f in fields(AseLabels)}
    if set(data) - known:
        raise ValueError(
            f"--labels: unknown key(s) {sorted(set(data) - known)}; known {sorted(known)}"
        )
    try:
        return AseLabels(**data)
    except ValueError as error:
        raise ValueError(f"--labels {error}") from None


def _lookup(atoms: Any, key: str) -> Any:
    """The value stored under ``key`` for ``atoms`` (calculator, info, arrays, db row)."""
    calc = getattr(atoms, "calc", None)
    if calc is not None and key in calc.results:
        return calc.results[key]
    for table in (atoms.info, atoms.arrays):
        if key in table:
            return table[key]
    for extra in ("key_value_pairs", "data"):
        if key in atoms.info.get(extra, {}):
            return atoms.info[extra][key]
    return None


def _available(atoms: Any) -> list[str]:
    calc = getattr(atoms, "calc", None)
    keys = set(atoms.info) | set(atoms.arrays) | set(calc.results if calc is not None else ())
    for extra in ("key_value_pairs", "data"):
        keys |= set(atoms.info.get(extra, {}))
    return sorted(keys - {"key_value_pairs", "data", "numbers", "positions"})


def _stress_matrix(value: np.ndarray) -> np.ndarray | None:
    """(3, 3) stress of a Voigt (6,), flat (9,) or (3, 3) value; None for any other shape."""
    from ase.stress import voigt_6_to_full_3x3_stress

    if value.shape == (6,):
        return voigt_6_to_full_3x3_stress(value)
    if value.shape in ((9,), (3, 3)):
        return value.reshape(3, 3)
    return None


def frame_from_atoms(atoms: Any, labels: AseLabels, material_id: str, frame_id: str) -> Frame:
    """One Frame in our units from ``atoms`` with ``labels``' keys.

    A label that cannot be read (an energy that is not one number, a stress of no known
    shape) or whose magnitude points at a wrong unit or a total/per-atom mix-up (beyond
    ``labels.max_energy_per_atom`` / ``max_stress_gpa``: ``implausible_labels``) is the
    frame's ``problem``, so that conversion skips the frame and lists it; ``check_frame``
    judges the shapes of forces and magnetic moments.
    """
    structure, problem = periodic_structure(atoms)
    n = len(atoms)
    frame = Frame(structure=structure, material_id=material_id, frame_id=frame_id)

    problems = [problem]

    def get(key: str) -> np.ndarray | None:
        value = _lookup(atoms, key) if key else None
        try:
            return None if value is None else np.array(value, dtype=np.float64)
        except (TypeError, ValueError):  # "failed", a list of words: not a label
            problems.append(f"label {key!r} is {_shown(value)}, not a number")
            return None

    keys = (labels.energy, labels.forces, labels.stress, labels.magmoms)
    energy, forces, stress, magmoms = (get(key) for key in keys)
    if energy is not None:
        if energy.size == 1:
            frame.energy_per_atom = float(energy.reshape(())) / (1 if labels.energy_per_atom else n)
        else:
            problems.append(
                f"energy {labels.energy!r} has shape {energy.shape}, expected one value"
            )
    frame.forces = forces
    if stress is not None:
        matrix = _stress_matrix(stress)
        frame.stress = None if matrix is None else matrix * labels.stress_factor
        if matrix is None:
            problems.append(f"stress {labels.stress!r} has shape {stress.shape}, expected (6,), "
                            "(9,) or (3, 3)")  # fmt: skip
    if magmoms is not None:
        frame.magmoms = np.abs(magmoms.reshape(n) if magmoms.size == n else magmoms)
    kind = "per atom" if labels.energy_per_atom else "a total"
    problems.append(implausible_labels(
        frame, labels.max_energy_per_atom, labels.max_stress_gpa,
        energy_hint=f"read as {kind}, is energy_per_atom right?",
        stress_hint=f"read in {labels.stress_unit}, is stress_unit right?",
    ))  # fmt: skip
    frame.problem = next((p for p in problems if p), None)
    return frame


def _shown(value: Any, limit: int = 40) -> str:
    """``value`` for a message, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ase_error(error: Exception) -> str:
    """The first line of ASE's message (its errors have many types), or the type's name."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _images(path: Path) -> Iterator[Any]:
    """Atoms of ``path`` one at a time: ASE-db rows, an extxyz/xyz file's frames each parsed
    on its own (``_xyz_frames``), else ``ase.io.iread``. A frame ASE cannot read comes as a
    ValueError naming the file and the frame (its position and default id); after it, an
    extxyz or ASE trajectory file is read on (``_traj_frames``), any other file's rest is not
    read. A POSCAR's lines are checked
    first (``data.poscar.check_poscar``)."""
    if path.suffix.lower() in (".xyz", ".extxyz"):
        yield from _xyz_frames(path)
        return
    if path.suffix.lower() == ".traj":
        yield from _traj_frames(path)
        return
    from fastchgnet.data.poscar import check_poscar

    position = 0
    try:
        check_poscar(path)
    except ValueError as error:  # a POSCAR whose lines do not say what they hold
        yield error
        return
    try:
        if path.suffix == ".db":
            from ase.db import connect

            for row in connect(str(path)).select():
                yield row.toatoms(add_additional_information=True)
                position += 1
        else:
            from ase.io import iread

            for atoms in iread(str(path), index=":", do_not_split_by_at_sign=True):
                yield atoms
                position += 1
    except Exception as error:  # only ASE's reading runs here: its errors have many types
        yield ValueError(
            f"{path}: ASE cannot read frame {position} ({path.stem}-{position}): "
            f"{_ase_error(error)}; the frames after it are not read"
        )


def _traj_frames(path: Path) -> Iterator[Any]:
    """An ASE trajectory's frames, each read on its own by its index (the file holds every
    frame's offset): one ASE cannot read (a damaged or cut-off part) comes as a ValueError
    naming it, and the frames after it are read."""
    from ase.io.trajectory import Trajectory

    try:
        trajectory = Trajectory(str(path))
    except Exception as error:  # only ASE's reading runs here: its errors have many types
        yield ValueError(f"{path}: ASE cannot read it as a trajectory: {_ase_error(error)}")
        return
    with trajectory:
        for position in range(len(trajectory)):
            try:
                atoms = trajectory[position]
            except Exception as error:  # as above
                where = f"{path}: ASE cannot read frame {position} ({path.stem}-{position})"
                atoms = ValueError(f"{where}: {_ase_error(error)}")
            yield atoms


def _count(line: str) -> int | None:
    """The atom count ``line`` is (one integer alone on it), else None."""
    words = line.split()
    return int(words[0]) if len(words) == 1 and words[0].isdigit() else None


def _xyz_frames(path: Path) -> Iterator[Any]:
    """An extxyz file's frames (a count line, a comment line, that many atom lines), each
    parsed by ASE on its own text. A frame ASE cannot read, or whose atom lines are fewer
    or more than its count says (the next count line or the file's end comes first, or a
    line of as many words as its last follows), or a line where a count line should be,
    comes as a ValueError, and reading goes on at the next count line
    (blank lines between frames are passed over)."""
    from io import StringIO

    from ase.io import read

    with open(path) as lines:
        line, number, position = lines.readline(), 1, 0

        def to_count_line() -> None:
            """Pass over the lines up to the next count line (or the file's end)."""
            nonlocal line, number
            while line and _count(line) is None:
                line, number = lines.readline(), number + 1

        while line:
            if not line.strip():
                line, number = lines.readline(), number + 1
                continue
            where = f"{path}: ASE cannot read frame {position} ({path.stem}-{position})"
            count, first = _count(line), number
            if count is None:  # not a count line: pass over all up to the next one
                bad = line.strip()
                to_count_line()
                yield ValueError(f"{where}: line {first} {_shown(bad)} is not an atom count")
                position += 1
                continue
            text = [line, lines.readline()]
            number += 2
            line = lines.readline()
            while line and len(text) < count + 2 and _count(line) is None:
                text.append(line)
                line, number = lines.readline(), number + 1
            position += 1
            if len(text) < count + 2:
                end = "the file ends" if not line else f"line {number} is the next count line"
                yield ValueError(
                    f"{where}: line {first} says {count} atoms, {len(text) - 2} atom lines "
                    f"follow ({end})"
                )
                continue
            if count and len(line.split()) == len(text[-1].split()):  # one more atom line
                extra = number
                to_count_line()
                yield ValueError(
                    f"{where}: line {first} says {count} atoms, more atom lines follow (line "
                    f"{extra} is no count line)"
                )
                continue
            try:
                yield read(StringIO("".join(text)), format="extxyz")
            except Exception as error:  # only ASE's reading runs here
                yield ValueError(f"{where}: {_ase_error(error)}")


def read_ase_labelled(path: str | Path, labels: AseLabels | None = None) -> Iterator[Frame]:
    """Stream Frames from an extxyz / ASE-db / any ``ase.io`` file with ``labels``' keys.

    Every key named other than its default must be in the first frame (a wrong key name is an
    error listing the keys the file has); a frame without a key is unlabelled (masked) for
    that target.
    ``material_id``/``frame_id`` as ``read_ase``.

    Raises:
        ValueError: a named key is not in the first frame, or ASE cannot read the first frame
            (naming the file). A frame with unreadable or implausible labels is yielded with
            a ``problem`` (``frame_from_atoms``), and so is a later frame ASE cannot read (a
            truncated file's last): the frames before it are kept, and in an extxyz/xyz file
            (``_xyz_frames``) or an ASE .traj (``_traj_frames``) the frames after it too;
            another format's rest is not read.
    """
    labels = labels or AseLabels()
    path = Path(path)
    stem = path.stem
    images = _images(path)
    for position in itertools.count():
        atoms = next(images, None)
        if atoms is None:
            return
        if isinstance(atoms, ValueError):  # ASE cannot read this frame: the first ends it
            if position == 0:
                raise atoms
            yield unreadable_frame(stem, f"{stem}-{position}", str(atoms))
            continue
        if position == 0:
            chosen = [getattr(labels, t) for t in ("energy", "forces", "stress", "magmoms")
                      if getattr(labels, t) != getattr(AseLabels, t)]  # fmt: skip
            missing = [k for k in chosen if k and _lookup(atoms, k) is None]
            if missing:
                raise ValueError(
                    f"{path}: label key(s) {missing} not in the first frame; it has "
                    f'{_available(atoms)} (set the key, or "" when the file has no such label)'
                )
        frame_id = str(atoms.info.get("frame_id", f"{stem}-{position}"))
        yield frame_from_atoms(atoms, labels, ase_material_id(atoms, stem), frame_id)
