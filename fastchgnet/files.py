"""Atomic, checksummed files: the one writer and the one verifier of everything we keep.

Every file goes to a temp file in the same folder, is fsynced and renamed over the target, and
the folder entry is fsynced, so a run killed at any moment leaves the old file or the new one,
never a torn one. Checksummed files (model files, training checkpoints) wrap their payload's
bytes with a format name, a version and the bytes' sha256, checked on every load; cache shards
record their files' sha256 in JSON written the same way. Nothing here imports the rest of the
package.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch


class ChecksumError(ValueError):
    """A file is missing, damaged, foreign or of an unknown version; the message names it."""


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp", new: bool = False) -> Iterator[Path]:
    """A new temp file's path in ``path``'s folder, ending in ``suffix``, for the block to
    write. On a clean exit the file is fsynced and renamed over ``path`` (and the folder
    fsynced); on an error it is removed and ``path`` is left as it was, so a reader sees the
    old whole file or the new one. The file gets the mode a plain ``open`` would give it
    (0666 less the umask), which a writer that reopens it by name keeps. With ``new``,
    ``path`` must still be free at the end (``put_new``): nothing another process wrote
    there meanwhile is replaced."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; name a file in it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~process_umask())  # as open() would: mkstemp's file is 0600
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if new:
            put_new(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def check_output_folder(path: str | Path, name: str) -> None:
    """Raise FileNotFoundError (one line, naming ``name`` and ``path``) when the folder of the
    file to be written at ``path`` does not exist: checked before a run, so that its results
    are not lost at its end."""
    folder = Path(path).parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{name} {path}: the folder {folder} does not exist")


def put_new(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` to ``path`` only if no file is there (a hard link, which
    fails where one is; a rename after a check where the file system has no hard links).
    Where another process wrote ``path`` meanwhile, ``tmp`` is kept beside it as
    ``<stem>.<pid><suffixes>`` and FileExistsError names both."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    except OSError:  # no hard links here
        if not os.path.lexists(path):
            os.replace(tmp, path)
            return
    else:
        tmp.unlink()
        return
    suffixes = "".join(path.suffixes)  # out.extxyz.gz -> out.<pid>.extxyz.gz: still readable
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    kept = path.with_name(f"{stem}.{os.getpid()}{suffixes}")
    os.replace(tmp, kept)
    raise FileExistsError(
        f"{path}: another process wrote it while this one ran; this run's results are in {kept}"
    )


@contextmanager
def atomic_open(path: str | Path, new: bool = False) -> Iterator[BinaryIO]:
    """A binary handle on a temp file in ``path``'s folder, renamed over ``path`` on a clean
    exit and removed on an error (``atomic_path``; ``new``: ``path`` must still be free)."""
    with atomic_path(path, new=new) as tmp, open(tmp, "wb") as handle:
        yield handle


def process_umask() -> int:
    """This process's umask (the bits a new file's mode leaves out), read without changing it
    where Linux shows it, else set and restored at once."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes, new: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (``atomic_open``; ``new``: ``path`` must still be
    free at the end)."""
    with atomic_open(path, new=new) as handle:
        handle.write(data)


def write_frames_atomic(path: str | Path, frames: Sequence[Any], new: bool = False) -> None:
    """Write ASE ``frames`` (a list of ``Atoms``) to ``path`` as ``ase.io.write`` would (the
    format and any compression from the name), atomically (``atomic_path``, its temp file
    ending as ``path``'s name does, so ASE reads the same format from it; ``new``: ``path``
    must still be free at the end)."""
    from ase.io import write

    path = Path(path)
    with atomic_path(path, suffix="".join(path.suffixes) or path.name, new=new) as tmp:
        write(str(tmp), list(frames))


def write_json_atomic(path: str | Path, data: object) -> None:
    """Write ``data`` as indented, standard JSON to ``path`` atomically: a float that is NaN
    or infinite (an R² of one structure) is written null, which every JSON reader reads
    (Python's default writes the bare NaN that jq, JavaScript and ijson refuse)."""
    text = json.dumps(_standard(data), indent=1, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def _standard(data: object) -> object:
    """``data`` with its non-finite floats (in dicts, lists and tuples) as None."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _standard(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_standard(value) for value in data]
    return data


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 16 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def write_checksummed(path: str | Path, payload: Any, kind: str, version: int) -> None:
    """torch-save ``payload`` (tensors, numbers, strings, dicts, lists), wrap its bytes with
    ``kind``, ``version`` and their sha256, and write the whole atomically."""
    body = io.BytesIO()
    torch.save(payload, body)
    data = body.getvalue()
    wrapper = {"format": kind, "version": version, "sha256": hashlib.sha256(data).hexdigest()}
    out = io.BytesIO()  # the body as a uint8 tensor: stored raw (pickled bytes grow ~50 %)
    torch.save({**wrapper, "body": torch.frombuffer(bytearray(data), dtype=torch.uint8)}, out)
    atomic_write_bytes(path, out.getvalue())


def read_checksummed(
    path: str | Path,
    kind: str,
    versions: Sequence[int],
    safe_globals: Callable[[], Sequence[type]] | None = None,
) -> tuple[int, Any]:
    """(version, payload) of a file of ``write_checksummed``, read with
    ``torch.load(weights_only=True)`` (no code runs): beyond plain data, only the classes
    ``safe_globals()`` lists are allowed, and only when the payload needs them.

    Raises:
        ChecksumError: unreadable, not a ``kind`` file, a version not in ``versions``, or a
            checksum that does not match (the file is damaged), naming the file.
    """
    path = Path(path)
    try:
        wrapper = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's own text would advise weights_only=False: not here
        # torch's own text: weights_only advice, or a bare key of its reader ("101" for text)
        cryptic = isinstance(exc, (pickle.UnpicklingError, KeyError, EOFError))
        reason = "not a torch file, or a truncated one" if cryptic else exc
        first = str(reason).splitlines()[0] if str(reason) else type(exc).__name__
        raise ChecksumError(f"{path}: not a readable {kind} file ({first})") from exc
    if not isinstance(wrapper, dict) or wrapper.get("format") != kind:
        raise ChecksumError(f"{path}: not a {kind} file")
    version = wrapper.get("version")
    if version not in versions:
        said = "no version (an older format)" if version is None else f"version {version}"
        raise ChecksumError(
            f"{path}: {kind} file of {said}, which this release does not read "
            f"(it reads version {', '.join(map(str, versions))})"
        )
    body = wrapper.get("body")
    body = body.numpy().tobytes() if isinstance(body, torch.Tensor) else None
    if body is None or hashlib.sha256(body).hexdigest() != wrapper.get("sha256"):
        raise ChecksumError(f"{path}: checksum mismatch; the file is damaged")
    try:
        return version, torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if safe_globals is None:
            raise
        with torch.serialization.safe_globals(list(safe_globals())):
            return version, torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
