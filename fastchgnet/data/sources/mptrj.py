"""MPtrj JSON (.json, .json.gz), streamed with ijson: energy per atom from the chosen field,
forces eV/Å, stress kBar (VASP sign) -> GPa x -0.1, magnetic moments |μB|."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pymatgen.core import Lattice, Structure

from fastchgnet.data.frame import Frame, implausible_labels, unreadable_frame
from fastchgnet.data.sources.labels import label_array
from fastchgnet.units import KBAR_TO_GPA

#: MPtrj energy fields we can train on. CHGNet 0.3.0 was trained on ``corrected_total_energy``
#: (total energy with the MP2020 compatibility corrections) divided by the number of atoms.
#: ``energy_per_atom`` is MPtrj's uncorrected energy per atom; ``uncorrected_total_energy`` is
#: the raw VASP total energy (divided by the number of atoms here).
MPTRJ_ENERGY_KEYS = {
    "corrected_total_energy": True,  # True: a total, divide by n_atoms
    "uncorrected_total_energy": True,
    "energy_per_atom": False,
}


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def read_mptrj(path: str | Path, energy_key: str = "corrected_total_energy") -> Iterator[Frame]:
    """Stream frames from an MPtrj JSON file (optionally .gz), one material at a time.

    The file ``{material_id: {frame_id: {"structure", "force", "stress", "magmom", ...}}}`` is
    read with ijson, so memory holds one material's frames, whatever the file size.
    Stress in kBar (VASP sign) becomes GPa (CHGNet sign) by ``KBAR_TO_GPA``; ``magmom: null``
    becomes ``None``; magnetic moments are made absolute. A record that cannot be read (no
    structure, a disordered one, labels that are not numbers) or whose labels are implausible
    (``implausible_labels``) is a frame with a ``problem``.

    Args:
        path: the JSON file.
        energy_key: one of ``MPTRJ_ENERGY_KEYS``; totals are divided by the number of atoms.

    Raises:
        ValueError: an unknown ``energy_key`` (at once); while streaming, a file that is not
            complete JSON (naming it and the last material read) or holds no frames.
    """
    if energy_key not in MPTRJ_ENERGY_KEYS:
        raise ValueError(f"energy_key {energy_key!r} not one of {sorted(MPTRJ_ENERGY_KEYS)}")
    return _stream(Path(path), energy_key)


def _stream(path: Path, energy_key: str) -> Iterator[Frame]:
    import ijson

    last, n_frames, n_materials = None, 0, 0
    try:
        with _open_binary(path) as handle:
            for material_id, frames in ijson.kvitems(handle, "", use_float=True):
                yield from _material_frames(str(material_id), frames, energy_key)
                last, n_materials = str(material_id), n_materials + 1
                n_frames += len(frames) if isinstance(frames, dict) else 1
    except (ijson.JSONError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as error:
        text = str(error)
        if "NaN" in text or "Infinity" in text or "symbol 'N'" in text or "symbol 'I'" in text:
            # not standard JSON, but what Python's json.dump writes by default: Python's
            # decoder reads it (slower), from the material ijson stopped in on
            for material_id, frames in _tolerant_materials(path, skip=n_materials):
                yield from _material_frames(material_id, frames, energy_key)
                n_frames += len(frames) if isinstance(frames, dict) else 1
        else:
            where = f"after material {last} ({n_frames} frames read)" if last else "in material 1"
            reason = (text.strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(f"{path}: not complete JSON, it breaks {where}: {reason}") from None
    if n_frames == 0:
        raise ValueError(
            f"{path}: no MPtrj frames (expected {{material_id: {{frame_id: record}}}})"
        )


def _material_frames(material_id: str, frames: object, energy_key: str) -> Iterator[Frame]:
    """The frames of one material's record (a frame with a problem where it is not an object
    of frames)."""
    if not isinstance(frames, dict):
        yield unreadable_frame(material_id, "", "not an object of frames")
        return
    for frame_id, record in frames.items():
        yield _mptrj_frame(record, material_id, str(frame_id), energy_key)


#: Largest single material the NaN-tolerant reader buffers before calling the file broken
MAX_MATERIAL_CHARS = 1 << 28
#: Characters the NaN-tolerant reader reads at a time
READ_CHARS = 1 << 20


def _tolerant_materials(path: Path, skip: int) -> Iterator[tuple[str, object]]:
    """(material id, its frames) of ``path`` after the first ``skip`` materials, parsed one
    material at a time by Python's json decoder, which reads the NaN and Infinity literals
    ijson refuses (as float nan / inf: such a frame's labels are then refused by the frame
    checks, and the frame reported). Memory holds one material.

    Raises:
        ValueError: naming the file, where it is not JSON of MPtrj's shape.
    """
    decoder = json.JSONDecoder()
    with gzip.open(path, "rt") if path.suffix == ".gz" else path.open() as handle:
        text, at, index = "", 0, 0

        def more() -> bool:
            nonlocal text, at
            chunk = handle.read(READ_CHARS)
            text, at = text[at:] + chunk, 0
            return bool(chunk)

        def token() -> str:  # the next non-blank character (not consumed)
            nonlocal at
            while True:
                while at < len(text) and text[at].isspace():
                    at += 1
                if at < len(text) or not more():
                    return text[at] if at < len(text) else ""

        def value() -> object:
            nonlocal at
            token()  # raw_decode takes no leading blanks
            while True:
                try:
                    parsed, at = decoder.raw_decode(text, at)
                    return parsed
                except json.JSONDecodeError as error:
                    if len(text) - at > MAX_MATERIAL_CHARS or not more():
                        raise ValueError(f"{path}: not complete JSON: {error.msg}") from None

        if token() != "{":
            raise ValueError(f"{path}: not an MPtrj object {{material_id: ...}}")
        at += 1
        while token() not in ("}", ""):
            key = value()
            if token() != ":":
                raise ValueError(f"{path}: not complete JSON after key {key!r}")
            at += 1
            frames = value()
            if index >= skip:
                yield str(key), frames
            index += 1
            if token() == ",":
                at += 1
        if token() != "}":
            raise ValueError(f"{path}: not complete JSON, it breaks after material {index}")


def _structure_from_dict(data: dict) -> Structure:
    """pymatgen Structure from its dict; ordered sites take a path 3x faster than
    ``Structure.from_dict`` (site properties and oxidation states are not kept: labels are)."""
    sites = data["sites"]
    if not all(
        len(site["species"]) == 1 and site["species"][0].get("occu", 1) == 1 for site in sites
    ):
        return Structure.from_dict(data)
    return Structure(
        Lattice(data["lattice"]["matrix"]),
        [site["species"][0]["element"] for site in sites],
        [site["abc"] for site in sites],
    )


#: what reading a malformed record raises (a missing key, a wrong type, a ragged list)
_UNREADABLE = (KeyError, TypeError, ValueError, IndexError, AttributeError)


def _mptrj_frame(record: dict, material_id: str, frame_id: str, energy_key: str) -> Frame:
    if not isinstance(record, dict) or "structure" not in record:
        return unreadable_frame(material_id, frame_id, "the record has no 'structure'")
    try:
        structure = _structure_from_dict(record["structure"])
    except _UNREADABLE as error:
        return unreadable_frame(material_id, frame_id, f"unreadable structure ({_why(error)})")
    if not structure.is_ordered:
        return unreadable_frame(
            material_id,
            frame_id,
            f"disordered structure ({structure.composition.formula}, partial occupancies): "
            "a frame needs one element per site",
        )
    try:
        frame = _labelled(record, structure, energy_key)
    except _UnreadableLabel as error:
        return Frame(structure, material_id=material_id, frame_id=frame_id,
                     problem=f"unreadable label {error}")  # fmt: skip
    frame.material_id, frame.frame_id = material_id, frame_id
    frame.problem = implausible_labels(frame)
    return frame


class _UnreadableLabel(ValueError):
    """A label of an MPtrj record that is not numbers of the right kind: its message names
    the key, the value and why."""


def _label(record: dict, key: str, read: Callable[[object], object]) -> Any:
    """``read`` of ``record[key]`` (None where absent); what it raises becomes an
    ``_UnreadableLabel`` naming the key."""
    value = record.get(key)
    try:
        return None if value is None else read(value)
    except _UNREADABLE as error:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
        raise _UnreadableLabel(f"{key!r} = {shown} ({_why(error)})") from None


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"a {type(value).__name__}, not a number")
    return float(value)


def _labelled(record: dict, structure: Structure, energy_key: str) -> Frame:
    n_atoms = len(structure)
    energy = _label(record, energy_key, _number)
    if energy is not None and MPTRJ_ENERGY_KEYS[energy_key]:
        energy = energy / n_atoms
    stress = _label(record, "stress", label_array)
    magmoms = _label(record, "magmom", label_array)
    return Frame(
        structure=structure,
        energy_per_atom=energy,
        forces=_label(record, "force", label_array),
        stress=None if stress is None else stress * KBAR_TO_GPA,
        magmoms=None if magmoms is None else np.abs(magmoms),
    )


def _why(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"no {error.args[0]!r}"
    return f"{type(error).__name__}: {error}"
