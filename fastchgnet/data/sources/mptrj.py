"""MPtrj JSON (.json, .json.gz), streamed with ijson: energy per atom from the chosen field,
forces eV/Å, stress kBar (VASP sign) -> GPa x -0.1, magnetic moments |μB|."""

from __future__ import annotations

import codecs
import gzip
import json
import warnings
import zlib
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


class _ReadSome:
    """``handle`` for ijson, read as far as it is decoded (``read1``): where a gzip stream
    breaks off, ``read`` raises EOFError and loses what that call had decompressed (up to
    ijson's 64 KiB buffer, several materials); ``read1`` hands it over first, so every
    material complete before the break is parsed."""

    def __init__(self, handle: BinaryIO) -> None:
        self.read = handle.read1


def read_mptrj(path: str | Path, energy_key: str = "corrected_total_energy") -> Iterator[Frame]:
    """Stream frames from an MPtrj JSON file (optionally .gz), one material at a time.

    The file ``{material_id: {frame_id: {"structure", "force", "stress", "magmom", ...}}}`` is
    read with ijson, so memory holds one material's frames, whatever the file size.
    Stress in kBar (VASP sign) becomes GPa (CHGNet sign) by ``KBAR_TO_GPA``; ``magmom: null``
    becomes ``None``; magnetic moments are made absolute. A record that cannot be read (no
    structure, a disordered one, labels that are not numbers) or whose labels are implausible
    (``implausible_labels``) is a frame with a ``problem``, named by its material and frame id.
    A readable record without its energy (``energy_key``), ``force`` or ``stress`` is kept with
    that label ``None`` (masked in training); one warning at the end of the file counts them
    and names the first few ``material_id/frame_id`` (a null ``magmom`` is MPtrj's for runs
    without spin, not counted).

    A file that stops being JSON after some frames (a download cut off, .json or .json.gz; a
    corrupt part) keeps the materials read before the break: the break is one more frame,
    with material id the file's name, no frame id and the problem ``file is not complete
    JSON after material <id> (<n> frames read): <why>; nothing after it was read``, and a
    warning says so when it is reached. ijson yields a material only once it is complete, so
    the one the break is in gives no frame (nor does a complete one whose following ``,`` or
    ``}`` is cut off).

    Args:
        path: the JSON file.
        energy_key: one of ``MPTRJ_ENERGY_KEYS``; totals are divided by the number of atoms.

    Raises:
        ValueError: an unknown ``energy_key`` (at once); while streaming, naming the file: one
            that is not complete JSON before its first frame (where it breaks, and why), is
            not an object (NaN-tolerant path) or holds no frames.
    """
    if energy_key not in MPTRJ_ENERGY_KEYS:
        raise ValueError(f"energy_key {energy_key!r} not one of {sorted(MPTRJ_ENERGY_KEYS)}")
    return _stream(Path(path), energy_key)


def _stream(path: Path, energy_key: str) -> Iterator[Frame]:
    import ijson

    unlabelled = _Unlabelled(energy_key)
    last, n_frames, n_materials, broken, text = None, 0, 0, None, ""
    try:
        with _open_binary(path) as handle:  # kvitems yields a material once it is complete
            for material_id, frames in ijson.kvitems(_ReadSome(handle), "", use_float=True):
                yield from _material_frames(str(material_id), frames, energy_key, unlabelled)
                last, n_materials = str(material_id), n_materials + 1
                n_frames += _count(frames)
    except (ijson.JSONError, EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError) as error:
        text = str(error)
        broken = (text.strip().splitlines() or [type(error).__name__])[0]
    if any(s in text for s in ("NaN", "Infinity", "symbol 'N'", "symbol 'I'")):
        # not standard JSON, but what Python's json.dump writes by default: Python's decoder
        # reads it (slower), from the material ijson stopped in on
        broken = None
        try:
            for material_id, frames in _tolerant_materials(path, skip=n_materials):
                yield from _material_frames(material_id, frames, energy_key, unlabelled)
                last, n_frames = material_id, n_frames + _count(frames)
        except _Broken as error:
            broken = str(error)
    if broken is not None:
        yield _broken_file(path, broken, last, n_frames)
    elif n_frames == 0:
        raise ValueError(
            f"{path}: no MPtrj frames (expected {{material_id: {{frame_id: record}}}})"
        )
    unlabelled.warn(path)


def _count(frames: object) -> int:
    """How many frames one material's value stands for (1 where it is not an object)."""
    return len(frames) if isinstance(frames, dict) else 1


def _broken_file(path: Path, reason: str, last: str | None, n_frames: int) -> Frame:
    """The frame that reports where ``path`` stops being JSON (``reason``), after the
    material ``last`` and ``n_frames`` frames; a warning says so at once. With no frame
    before it, there is no dataset: a ValueError naming the file."""
    where = f"after material {last} ({n_frames} frames read)"
    if n_frames == 0:  # no dataset
        where = where if last else "before its first complete material"
        raise ValueError(f"{path}: not complete JSON, it breaks {where}: {reason}; no frame read")
    problem = f"file is not complete JSON {where}: {reason}; nothing after it was read"
    warnings.warn(
        f"{path}: {problem} (the frames before it are read; the break is one bad entry)",
        stacklevel=3,
    )
    return unreadable_frame(path.name, "", problem)


def _material_frames(
    material_id: str, frames: object, energy_key: str, unlabelled: _Unlabelled
) -> Iterator[Frame]:
    """The frames of one material's record (a frame with a problem where it is not an object
    of frames)."""
    if not isinstance(frames, dict):
        yield unreadable_frame(material_id, "", "not an object of frames")
        return
    for frame_id, record in frames.items():
        frame = _mptrj_frame(record, material_id, str(frame_id), energy_key)
        if frame.problem is None:
            unlabelled.add(frame)
        yield frame


class _Unlabelled:
    """Readable records without a label every MPtrj record carries (the energy, forces,
    stress): kept with that label masked, as ``None``; counted per key, the first
    ``SHOWN`` named ``material_id/frame_id``, and told in one warning at the end of the file.
    A null ``magmom`` is not counted: MPtrj writes it for runs without spin polarisation."""

    SHOWN = 5

    def __init__(self, energy_key: str) -> None:
        self.keys = {"energy_per_atom": energy_key, "forces": "force", "stress": "stress"}
        self.counts: dict[str, int] = {}
        self.names: dict[str, list[str]] = {}

    def add(self, frame: Frame) -> None:
        for label, key in self.keys.items():
            if getattr(frame, label) is None:
                self.counts[key] = self.counts.get(key, 0) + 1
                names = self.names.setdefault(key, [])
                if len(names) < self.SHOWN:
                    names.append(f"{frame.material_id}/{frame.frame_id}")

    def warn(self, path: Path) -> None:
        if not self.counts:
            return
        parts = []
        for key, count in self.counts.items():
            more = f" and {count - self.SHOWN} more" if count > self.SHOWN else ""
            parts.append(f"no {key!r} in {count} ({', '.join(self.names[key])}{more})")
        warnings.warn(
            f"{path}: record(s) kept without a label (masked in training): {'; '.join(parts)}",
            stacklevel=3,
        )


class _Broken(ValueError):
    """Where an MPtrj file stops being JSON: its message says why."""


#: Largest single material the NaN-tolerant reader buffers before calling the file broken
MAX_MATERIAL_CHARS = 1 << 28
#: Bytes the NaN-tolerant reader reads at a time (at most: as far as they are decompressed)
READ_CHARS = 1 << 20


def _tolerant_materials(path: Path, skip: int) -> Iterator[tuple[str, object]]:
    """(material id, its frames) of ``path`` after the first ``skip`` materials, parsed one
    material at a time by Python's json decoder, which reads the NaN and Infinity literals
    ijson refuses (as float nan / inf: such a frame's labels are then refused by the frame
    checks, and the frame reported). Memory holds one material.

    Raises:
        ValueError: naming the file, where it is not an object (not MPtrj's shape).
        _Broken: where it stops being JSON, saying why (``_stream`` reports it).
    """
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    with _open_binary(path) as handle:  # read1: what is read before a break is parsed
        text, at, index = "", 0, 0

        def more() -> bool:
            nonlocal text, at
            try:
                data = handle.read1(READ_CHARS)
                chunk = utf8.decode(data, final=not data)
            except (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError) as error:
                raise _Broken(str(error).strip().splitlines()[0]) from None
            text, at = text[at:] + chunk, 0
            return bool(data)

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
                    if len(text) - at > MAX_MATERIAL_CHARS:
                        raise _Broken(f"{error.msg} in {MAX_MATERIAL_CHARS} characters") from None
                    if not more():
                        raise _Broken(error.msg) from None

        if token() != "{":
            raise ValueError(f"{path}: not an MPtrj object {{material_id: ...}}")
        at += 1
        while token() not in ("}", ""):
            key = value()
            if token() != ":":
                raise _Broken(f"no ':' after the key {key!r}")
            at += 1
            frames = value()
            if index >= skip:
                yield str(key), frames
            index += 1
            if token() == ",":
                at += 1
        if token() != "}":
            raise _Broken("it ends before its closing '}'")


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
