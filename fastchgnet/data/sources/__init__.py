"""Sources of labelled frames, one module each: MPtrj JSON (mptrj), ASE-readable files
(ase_files; with chosen keys: data.ase_labels), VASP runs (vasp), in-memory Structures
(structures); ``read_frames`` picks one by the path.

Every reader yields ``Frame`` objects with labels in our units, converted here, once:
energy eV/atom, forces eV/Å, stress GPa with CHGNet's sign, magnetic moments |μB|. A label
that the source lacks is ``None`` (masked downstream), never zero. Readers judge only what they
alone can see: a record they cannot read (``unreadable_frame``), no periodic cell, labels beyond
plausible magnitudes (``implausible_labels``); these become ``Frame.problem``. ``check_frame``
judges the rest; ``data.convert`` skips and lists (skipped.json), and ``data.stats`` lists as
unusable, every frame it rejects. A file that cannot be read at all is a ValueError naming it.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastchgnet.data.ase_labels import AseLabels, read_ase_labelled
from fastchgnet.data.frame import Frame
from fastchgnet.data.origin import source_identity
from fastchgnet.data.sources.ase_files import gunzip_ase_file, read_ase, read_atoms
from fastchgnet.data.sources.mptrj import MPTRJ_ENERGY_KEYS, read_mptrj
from fastchgnet.data.sources.structures import from_structures
from fastchgnet.data.sources.vasp import ionic_step_energy, read_vasp

__all__ = [
    "MPTRJ_ENERGY_KEYS",
    "Frame",
    "SourceFrames",
    "from_structures",
    "gunzip_ase_file",
    "ionic_step_energy",
    "read_ase",
    "read_ase_labelled",
    "read_atoms",
    "read_frames",
    "read_mptrj",
    "read_vasp",
]


#: suffixes of config files, which a data source is not
CONFIG_SUFFIXES = (".toml", ".yaml", ".yml", ".ini", ".cfg")


def read_frames(
    path: str | Path,
    energy_key: str = "corrected_total_energy",
    labels: AseLabels | None = None,
    scratch: str | Path | None = None,
) -> SourceFrames:
    """Pick a reader by suffix: .json/.json.gz MPtrj; a directory, .zip or vasprun.xml VASP;
    anything else ``data.ase_labels.read_ase_labelled`` (streamed; ``labels``: its
    ``AseLabels``, key names and units). A gzip-compressed ASE file (.extxyz.gz) is read
    from one decompressed copy in a temporary folder under ``scratch`` (default: the system's),
    removed when the frames are done or closed (``gunzip_ase_file``: ASE's reader seeks back to
    each frame, which in a gzip stream is quadratic); copies that a killed process left there
    are removed when the next one starts (``remove_stale_copies``).

    Returns the frames with their ``origin`` (``SourceFrames``), what ``convert`` records.
    A path that does not exist (FileNotFoundError) or an empty file (ValueError) is refused
    here, before any frame is asked for; every other problem of a file comes while streaming.
    """
    path = Path(path)
    name = path.name.lower()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file, no frames")
    if name.endswith(CONFIG_SUFFIXES):
        raise ValueError(f"{path}: a config file, not data (a run's config is --config {path})")
    if name.endswith((".json", ".json.gz")):
        origin = {"reader": "mptrj", "energy_key": energy_key}
        return SourceFrames(read_mptrj(path, energy_key=energy_key), path, origin)
    if path.is_dir() or name.endswith(".zip") or name.startswith("vasprun"):
        return SourceFrames(read_vasp(path), path, {"reader": "vasp"})
    origin = {"reader": "ase", "labels": asdict(labels or AseLabels())}
    if name.endswith(".gz"):
        return SourceFrames(_read_gzipped(path, labels, scratch), path, origin)
    return SourceFrames(read_ase_labelled(path, labels), path, origin)


class SourceFrames(Iterator[Frame]):
    """The frames of one source file and ``origin``: its identity
    (``origin.source_identity``) and the reader's label settings, which ``convert`` records in
    the cache. ``close()`` (or leaving a ``with`` block) ends the reader early and removes its
    temporary files."""

    def __init__(self, frames: Iterator[Frame], path: Path, reading: dict[str, Any]) -> None:
        self.frames = frames
        self.path, self.reading = path, reading

    @functools.cached_property
    def origin(self) -> dict[str, Any]:
        """The source's identity and the reader's settings, computed on first use (hashing a
        file of up to 64 MiB: ``data stats`` never asks)."""
        return {**source_identity(self.path), **self.reading}

    def __next__(self) -> Frame:
        return next(self.frames)

    def close(self) -> None:
        """Stop reading; a generator reader's ``finally`` blocks run now."""
        close = getattr(self.frames, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> SourceFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: name prefix of a decompressed copy's folder; host and process id follow
COPY_PREFIX = "fastchgnet-gunzip-"


def _read_gzipped(
    path: Path, labels: AseLabels | None, scratch: str | Path | None
) -> Iterator[Frame]:
    folder = Path(scratch) if scratch is not None else Path(tempfile.gettempdir())
    remove_stale_copies(folder)
    owner = f"{COPY_PREFIX}{socket.gethostname()}@{os.getpid()}@"  # no host name holds "@"
    with tempfile.TemporaryDirectory(dir=folder, prefix=owner) as copy:
        yield from read_ase_labelled(gunzip_ase_file(path, Path(copy)), labels)


def remove_stale_copies(folder: Path, own: bool = False) -> list[Path]:
    """Remove the decompressed-copy folders (``COPY_PREFIX``) in ``folder`` that a process of
    this host left behind when it was killed (its process id no longer runs); with ``own``,
    this process's copies too (a process about to end without its ``finally`` blocks: a
    rank's ``os._exit`` on the launcher's SIGTERM). Returns the folders removed."""
    host = socket.gethostname()
    removed = []
    for stale in folder.glob(f"{COPY_PREFIX}{host}@*@*"):  # this host's, no other's
        pid = stale.name[len(f"{COPY_PREFIX}{host}@") :].split("@")[0]
        if not (stale.is_dir() and pid.isdigit()):
            continue
        if (own and int(pid) == os.getpid()) or not _running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
