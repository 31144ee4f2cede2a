"""Sharded, memory-mapped store of crystal graphs and labels; ``convert`` fills it.

A cache folder holds::

    settings.json          cutoffs and shard size it was built with (a rerun must match)
                           (written just before the first shard is finished)
    shard-00000/ ...       one folder per ``shard_size`` source frames: .npy arrays (below)
                           and shard.json (file sha256s, source frame range, skipped frames)
    manifest.json          written last: every shard's file sha256s; a cache without it is
                           unfinished (rerun ``convert``: finished shards are kept)
    skipped.json           every rejected frame with its ids and the reason

Shard arrays (shape | meaning); missing labels are NaN and ``label_mask`` is False:
    atomic_numbers (atoms,) int16 | frac_coords (atoms, 3) f64 | lattice (S, 3, 3) f64
    bond_atoms (bonds, 2) int32 local | bond_images (bonds, 3) int16 | angle_edges (angles, 2)
    int32 local | sizes (S, 3) atoms, bonds, angles | short_bonds (S,) bonds shorter than the
    bond cutoff (stored first) | energy_per_atom (S,) eV/atom |
    forces (atoms, 3) eV/Å | stress (S, 3, 3) GPa | magmoms (atoms,) μB |
    label_mask (S, 4) energy, forces, stress, magmoms | material_ids (S,) | frame_ids (S,)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastchgnet.data.graph import CrystalGraph
from fastchgnet.files import file_sha256

FORMAT_VERSION = 2
LABELS = ("energy_per_atom", "forces", "stress", "magmoms")
#: name -> (dtype, level, trailing shape): level names the count of the first axis.
ARRAYS: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "atomic_numbers": ("int16", "atoms", ()),
    "frac_coords": ("float64", "atoms", (3,)),
    "forces": ("float64", "atoms", (3,)),
    "magmoms": ("float64", "atoms", ()),
    "bond_atoms": ("int32", "bonds", (2,)),
    "bond_images": ("int16", "bonds", (3,)),
    "angle_edges": ("int32", "angles", (2,)),
    "lattice": ("float64", "structures", (3, 3)),
    "sizes": ("int64", "structures", (3,)),
    "short_bonds": ("int64", "structures", ()),
    "energy_per_atom": ("float64", "structures", ()),
    "stress": ("float64", "structures", (3, 3)),
    "label_mask": ("bool", "structures", (4,)),
    "material_ids": ("str", "structures", ()),
    "frame_ids": ("str", "structures", ()),
}


class CacheError(RuntimeError, ValueError):
    """A cache folder is unfinished, corrupt, or was built with other settings (a ValueError
    too, so the command line reports it in one line)."""


@dataclass(frozen=True)
class Labels:
    """Labels of one structure; ``None`` where the source had none (masked in the loss).

    Fields (shape | unit): energy_per_atom float eV/atom; forces (n_atoms, 3) eV/Å;
    stress (3, 3) GPa, CHGNet sign; magmoms (n_atoms,) |μB|; material_id, frame_id str.
    """

    energy_per_atom: float | None
    forces: np.ndarray | None
    stress: np.ndarray | None
    magmoms: np.ndarray | None
    material_id: str
    frame_id: str


def verify_shard(shard_dir: Path, expected: dict[str, str]) -> None:
    """Raise ``CacheError`` naming the shard and file if any sha256 differs from ``expected``."""
    for name, sha in expected.items():
        path = shard_dir / name
        if not path.is_file():
            raise CacheError(f"shard {shard_dir}: file {name} is missing; the shard is corrupt")
        actual = file_sha256(path)
        if actual != sha:
            raise CacheError(
                f"shard {shard_dir}: {name} has sha256 {actual[:12]}..., manifest says "
                f"{sha[:12]}...; the shard is corrupt: delete the folder and rerun convert "
                "to rebuild it"
            )


def read_json_record(path: Path, redo: str) -> dict:
    """The JSON object in ``path`` (a cache's manifest.json or settings.json); a file that
    cannot be read, is not JSON or holds no object is a ``CacheError`` naming it and saying
    ``redo`` (what to do)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CacheError(f"{path}: unreadable ({error}); {redo}") from None
    if not isinstance(record, dict):
        raise CacheError(f"{path}: holds {type(record).__name__}, not a record; {redo}")
    return record


class GraphDataset:
    """Map-style dataset over a finished cache: ``ds[i] -> (CrystalGraph, Labels)``.

    Arrays are opened with ``np.load(mmap_mode="r")``; an item reads only its own slices, so
    memory stays small whatever the cache size. ``sizes`` ((N, 3) atoms, bonds, angles) feeds
    the sampler, ``material_ids`` the split.

    Args:
        cache_dir: the folder ``convert`` wrote.
        verify: check every shard's sha256 against the manifest on open (reads the cache once).
    """

    def __init__(self, cache_dir: str | Path, *, verify: bool = True) -> None:
        self.cache_dir = Path(cache_dir)
        manifest_path = self.cache_dir / "manifest.json"
        if not manifest_path.is_file():
            raise CacheError(
                f"{self.cache_dir}: no manifest.json, so conversion did not finish; run convert "
                "again with the same settings (finished shards are kept)"
            )
        redo = "run convert again with the same settings to rewrite it (finished shards are kept)"
        manifest = read_json_record(manifest_path, redo)
        if manifest.get("format") != FORMAT_VERSION:
            raise CacheError(f"{self.cache_dir}: cache format {manifest.get('format')} unknown")
        self.atom_cutoff = float(manifest["atom_cutoff"])
        self.bond_cutoff = float(manifest["bond_cutoff"])
        self.shard_names = [s["name"] for s in manifest["shards"]]
        if verify:
            for shard in manifest["shards"]:
                verify_shard(self.cache_dir / shard["name"], shard["sha256"])
        per_shard = [self._load(k, "sizes") for k in range(len(self.shard_names))]
        counts = np.array([s.shape[0] for s in per_shard], dtype=np.int64)
        self.sizes = np.concatenate(per_shard) if per_shard else np.zeros((0, 3), np.int64)
        self._shard_of = np.repeat(np.arange(counts.shape[0]), counts)
        self._position = np.arange(self.sizes.shape[0]) - np.repeat(
            np.cumsum(counts) - counts, counts
        )
        self._offsets = [
            np.vstack([np.zeros((1, 3), np.int64), np.cumsum(s, axis=0)]) for s in per_shard
        ]
        self._open: dict[tuple[int, str], np.ndarray] = {}

    def _load(self, shard: int, name: str) -> np.ndarray:
        return np.load(self.cache_dir / self.shard_names[shard] / f"{name}.npy", mmap_mode="r")

    def _array(self, shard: int, name: str) -> np.ndarray:
        key = (shard, name)
        if key not in self._open:
            self._open[key] = self._load(shard, name)
        return self._open[key]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = {}  # memory maps are reopened in each DataLoader worker
        return state

    def __len__(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def short_bonds(self) -> np.ndarray:
        """(N,) bond-graph (short) bonds of every structure."""
        parts = [np.asarray(self._array(k, "short_bonds")) for k in range(len(self.shard_names))]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    @property
    def material_ids(self) -> np.ndarray:
        """(N,) material id of every structure."""
        ids = [np.asarray(self._array(k, "material_ids")) for k in range(len(self.shard_names))]
        return np.concatenate(ids) if ids else np.zeros(0, dtype=str)

    @property
    def label_mask(self) -> np.ndarray:
        """(N, 4) bool: which of ``LABELS`` (energy, forces, stress, magmoms) each structure has."""
        masks = [np.asarray(self._array(k, "label_mask")) for k in range(len(self.shard_names))]
        return np.concatenate(masks) if masks else np.zeros((0, len(LABELS)), dtype=bool)

    @property
    def frame_ids(self) -> np.ndarray:
        """(N,) frame id of every structure."""
        ids = [np.asarray(self._array(k, "frame_ids")) for k in range(len(self.shard_names))]
        return np.concatenate(ids) if ids else np.zeros(0, dtype=str)

    def __getitem__(self, index: int) -> tuple[CrystalGraph, Labels]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} outside a cache of {len(self)} structures")
        index = int(index) % len(self)
        shard, pos = int(self._shard_of[index]), int(self._position[index])
        (a0, b0, g0), (a1, b1, g1) = self._offsets[shard][pos], self._offsets[shard][pos + 1]
        part = {"atoms": slice(a0, a1), "bonds": slice(b0, b1), "angles": slice(g0, g1)}

        def read(name: str) -> np.ndarray:
            level = ARRAYS[name][1]
            rows = part[level] if level != "structures" else pos
            return np.array(self._array(shard, name)[rows])

        mask = read("label_mask")
        material_id, frame_id = str(read("material_ids")), str(read("frame_ids"))
        graph = CrystalGraph(
            atomic_numbers=read("atomic_numbers").astype(np.int64),
            frac_coords=read("frac_coords"),
            lattice=read("lattice"),
            bond_atoms=read("bond_atoms").astype(np.int64),
            bond_images=read("bond_images").astype(np.int64),
            n_short_bonds=int(read("short_bonds")),
            angle_edges=read("angle_edges").astype(np.int64),
            atom_cutoff=self.atom_cutoff,
            bond_cutoff=self.bond_cutoff,
            name=f"frame {frame_id} of {material_id}",
        )
        values = {name: read(name) if mask[k] else None for k, name in enumerate(LABELS)}
        energy = values["energy_per_atom"]
        labels = Labels(
            energy_per_atom=None if energy is None else float(energy),
            forces=values["forces"],
            stress=values["stress"],
            magmoms=values["magmoms"],
            material_id=material_id,
            frame_id=frame_id,
        )
        return graph, labels


def shard_name(index: int) -> str:
    """Folder name of shard ``index``."""
    return f"shard-{index:05d}"


def remove_tree(path: Path) -> None:
    """Delete a folder or file if present; a symbolic link is removed, not what it names."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
