"""A cache shard's files (``cache.py`` has the layout): writing them (``ShardWriter``), the
fingerprint of the source frames a shard holds (``FramesFingerprint``), whether a shard
folder is finished and may be kept (``shard_is_done``), and which names in a cache folder
``convert`` made (``converter_paths``: it removes no other)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from fastchgnet.data.cache import ARRAYS, CacheError, verify_shard
from fastchgnet.data.frame import Frame
from fastchgnet.data.graph import atomic_numbers
from fastchgnet.files import file_sha256, write_json_atomic

#: the names ``convert`` gives shard folders (``cache.shard_name``) and their temporary folders
SHARD = re.compile(r"shard-\d{5,}")
TMP_SHARD = re.compile(r"\.tmp-shard-\d{5,}")


def converter_paths(out: Path, pattern: re.Pattern[str]) -> list[Path]:
    """The folders in ``out`` whose whole name matches ``pattern`` (``SHARD``, ``TMP_SHARD``),
    sorted: a user's own ``shard-notes.txt`` or ``.tmp-mine`` is not among them."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if pattern.fullmatch(p.name) and p.is_dir())


class FramesFingerprint:
    """sha256 over the source frames of a shard (ids, problem, lattice, coordinates, species
    and labels), so a rerun keeps a shard only for the very frames it was built from."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def add(self, frame: Frame) -> None:
        structure = frame.structure
        self.digest.update(f"{frame.material_id}\0{frame.frame_id}\0{frame.problem}\0".encode())
        try:
            species = atomic_numbers(structure).tobytes()
        except (AttributeError, ValueError):  # a disordered structure
            species = str(getattr(structure, "composition", "")).encode()
        self.digest.update(species)
        lattice = getattr(structure, "lattice", None)
        arrays = [
            None if lattice is None else lattice.matrix,
            getattr(structure, "frac_coords", None),
            frame.energy_per_atom,
            frame.forces,
            frame.stress,
            frame.magmoms,
        ]
        for value in arrays:
            self.digest.update(b"-" if value is None else np.asarray(value, np.float64).tobytes())

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def shard_is_done(shard_dir: Path, info: dict) -> bool:
    """Whether ``shard_dir`` is a finished shard built with ``info`` (settings, shard index,
    frame range) whose files match its shard.json; an unreadable shard.json is not done (the
    shard is rebuilt). Where ``info`` has no source ``origin``, only a shard that recorded its
    frames' fingerprint qualifies (``convert`` compares it with the frames it reads past)."""
    meta_path = shard_dir / "shard.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):  # cut short, garbled: build the shard again
        return False
    if not isinstance(meta, dict) or any(meta.get(key) != value for key, value in info.items()):
        return False
    if "origin" not in info and "frames_sha256" not in meta:
        return False
    try:
        verify_shard(shard_dir, meta["sha256"])
    except (CacheError, KeyError, TypeError, AttributeError):
        return False
    return True


class ShardWriter:
    """Appends records to raw part files in a temp folder, then writes .npy files."""

    def __init__(self, tmp_dir: Path) -> None:
        self.dir = tmp_dir
        tmp_dir.mkdir(parents=True)
        self.parts = {
            name: open(tmp_dir / f"{name}.part", "wb")  # noqa: SIM115 - closed in finish()
            for name, (dtype, _, _) in ARRAYS.items()
            if dtype != "str"
        }
        self.rows = dict.fromkeys(self.parts, 0)
        self.ids: dict[str, list[str]] = {"material_ids": [], "frame_ids": []}

    def add(self, record: dict) -> None:
        for name, handle in self.parts.items():
            value = np.ascontiguousarray(record[name], dtype=ARRAYS[name][0])
            handle.write(value.tobytes())
            self.rows[name] += value.shape[0]
        for name, ids in self.ids.items():
            ids.append(record[name])

    def close(self) -> None:
        for handle in self.parts.values():
            handle.close()

    def finish(self, info: dict) -> None:
        """Write every .npy (header, then the part file's bytes), fsync, and shard.json."""
        hashes = {}
        for name, (dtype, _, trailing) in ARRAYS.items():
            target = self.dir / f"{name}.npy"
            if dtype == "str":
                np.save(target, np.array(self.ids[name], dtype=str))
            else:
                self.parts[name].close()
                part = self.dir / f"{name}.part"
                header = {
                    "descr": np.dtype(dtype).str,
                    "fortran_order": False,
                    "shape": (self.rows[name], *trailing),
                }
                with open(target, "wb") as out, open(part, "rb") as src:
                    np.lib.format.write_array_header_1_0(out, header)
                    while block := src.read(1 << 24):
                        out.write(block)
                part.unlink()
            with open(target, "rb+") as handle:
                os.fsync(handle.fileno())
            hashes[target.name] = file_sha256(target)
        write_json_atomic(self.dir / "shard.json", {**info, "sha256": hashes})
