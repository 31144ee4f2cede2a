"""Labelled frames from extxyz / ASE-db files as others write them: chosen key names, total or
per-atom energy, stress unit and sign named, streamed (one frame in memory at a time).

Units are converted here, once: energy -> eV/atom, forces eV/Å, stress -> GPa with CHGNet's
(= ASE's) sign, magnetic moments -> |μB|. A label is looked up by its key in the calculator
results, then ``atoms.info``/``atoms.arrays``, then an ASE-db row's key-value pairs and data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fastchgnet.data.frame import Frame, periodic_structure, reduced_formula
from fastchgnet.errors import StructureError
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
    ``max_stress_gpa``, ``max_energy_per_atom``: a label beyond these magnitudes (after
    conversion) is an error naming the frame, as a wrong unit or a total/per-atom mix-up
    shows up this way.
    """

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"
    magmoms: str = "magmoms"
    energy_per_atom: bool = False
    stress_unit: Literal["eV/A^3", "GPa", "kBar"] = "eV/A^3"
    stress_sign: Literal["ase", "vasp"] = "ase"
    max_stress_gpa: float = 1000.0
    max_energy_per_atom: float = 50.0

    def __post_init__(self) -> None:
        if self.stress_unit not in STRESS_UNITS:
            raise ValueError(f"stress_unit {self.stress_unit!r}: use one of {list(STRESS_UNITS)}")
        if self.stress_sign not in ("ase", "vasp"):
            raise ValueError(f"stress_sign {self.stress_sign!r}: use 'ase' or 'vasp'")

    @property
    def stress_factor(self) -> float:
        """Multiplies the file's stress into GPa with CHGNet's sign."""
        sign = -1.0 if self.stress_sign == "vasp" else 1.0
        return sign * STRESS_UNITS[self.stress_unit]


def labels_from_json(text: str) -> AseLabels:
    """``AseLabels`` from a JSON object (``--labels '{"energy": "E_dft"}'``).

    Raises:
        ValueError: not a JSON object, or a key that ``AseLabels`` does not have.
    """
    import json
    from dataclasses import fields

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--labels {text!r}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--labels {text!r}: expected a JSON object")
    known = {f.name for f in fields(AseLabels)}
    if set(data) - known:
        raise ValueError(
            f"--labels: unknown key(s) {sorted(set(data) - known)}; known {sorted(known)}"
        )
    return AseLabels(**data)


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


def _stress_matrix(value: np.ndarray, name: str) -> np.ndarray:
    from ase.stress import voigt_6_to_full_3x3_stress

    if value.shape == (6,):
        return voigt_6_to_full_3x3_stress(value)
    if value.shape in ((9,), (3, 3)):
        return value.reshape(3, 3)
    raise StructureError(name, f"stress has shape {value.shape}, expected (6,), (9,) or (3, 3)")


def frame_from_atoms(atoms: Any, labels: AseLabels, material_id: str, frame_id: str) -> Frame:
    """One Frame in our units from ``atoms`` with ``labels``' keys; checks shapes and sizes.

    Raises:
        StructureError: naming the frame: a label of the wrong shape, or a stress/energy whose
            magnitude points at a wrong unit or a total/per-atom mix-up.
    """
    structure, problem = periodic_structure(atoms)
    n = len(atoms)
    frame = Frame(structure=structure, material_id=material_id, frame_id=frame_id, problem=problem)
    name = frame.name

    def get(key: str) -> np.ndarray | None:
        value = _lookup(atoms, key) if key else None
        return None if value is None else np.array(value, dtype=np.float64)

    keys = (labels.energy, labels.forces, labels.stress, labels.magmoms)
    energy, forces, stress, magmoms = (get(key) for key in keys)
    if energy is not None:
        if energy.size != 1:
            raise StructureError(name, f"energy {labels.energy!r} has shape {energy.shape}")
        frame.energy_per_atom = float(energy.reshape(())) / (1 if labels.energy_per_atom else n)
        if abs(frame.energy_per_atom) > labels.max_energy_per_atom:
            kind = "per atom" if labels.energy_per_atom else "a total"
            raise StructureError(
                name,
                f"energy {frame.energy_per_atom:.4g} eV/atom (read as {kind}) exceeds "
                f"{labels.max_energy_per_atom} eV/atom: is energy_per_atom right?",
            )
    if forces is not None:
        if forces.shape != (n, 3):
            raise StructureError(name, f"forces {labels.forces!r} have shape {forces.shape}, "
                                       f"expected ({n}, 3)")  # fmt: skip
        frame.forces = forces
    if stress is not None:
        frame.stress = _stress_matrix(stress, name) * labels.stress_factor
        largest = float(np.abs(frame.stress).max())
        if largest > labels.max_stress_gpa:
            raise StructureError(
                name,
                f"stress up to {largest:.4g} GPa after reading it in {labels.stress_unit} "
                f"exceeds {labels.max_stress_gpa} GPa: is stress_unit right?",
            )
    if magmoms is not None:
        if magmoms.size != n:
            raise StructureError(name, f"magmoms {labels.magmoms!r} have shape {magmoms.shape}, "
                                       f"expected ({n},)")  # fmt: skip
        frame.magmoms = np.abs(magmoms.reshape(n))
    return frame


def _images(path: Path) -> Iterator[Any]:
    """Atoms of ``path`` one at a time: ASE-db rows or ``ase.io.iread``."""
    if path.suffix == ".db":
        from ase.db import connect

        for row in connect(str(path)).select():
            yield row.toatoms(add_additional_information=True)
    else:
        from ase.io import iread

        yield from iread(str(path), index=":")


def read_ase_labelled(path: str | Path, labels: AseLabels | None = None) -> Iterator[Frame]:
    """Stream Frames from an extxyz / ASE-db / any ``ase.io`` file with ``labels``' keys.

    Every key named other than its default must be in the first frame (a wrong key name is an
    error listing the keys the file has); a frame without a key is unlabelled (masked) for
    that target.
    ``material_id``/``frame_id`` as ``read_ase``.

    Raises:
        ValueError: a named key is not in the first frame (naming the file).
        StructureError: see ``frame_from_atoms``.
    """
    labels = labels or AseLabels()
    path = Path(path)
    stem = path.stem
    for position, atoms in enumerate(_images(path)):
        if position == 0:
            chosen = [getattr(labels, t) for t in ("energy", "forces", "stress", "magmoms")
                      if getattr(labels, t) != getattr(AseLabels, t)]  # fmt: skip
            missing = [k for k in chosen if k and _lookup(atoms, k) is None]
            if missing:
                raise ValueError(
                    f"{path}: label key(s) {missing} not in the first frame; it has "
                    f'{_available(atoms)} (set the key, or "" when the file has no such label)'
                )
        info = atoms.info
        material_id = info.get("material_id", info.get("mp_id"))
        if material_id is None:
            material_id = f"{stem}:{reduced_formula(atoms.get_chemical_formula())}"
        frame_id = str(info.get("frame_id", f"{stem}-{position}"))
        yield frame_from_atoms(atoms, labels, str(material_id), frame_id)
