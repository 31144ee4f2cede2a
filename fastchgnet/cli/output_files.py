"""Output files of the commands, checked before a run: the format fits what is written, a
file already there is not replaced unasked, and nothing but a regular file is replaced."""

from __future__ import annotations

import os
from pathlib import Path

from fastchgnet.files import check_output_folder


def check_output_file(path: str, option: str, example: str) -> None:
    """Raise ValueError (one line, naming ``option`` and ``path``) when a file cannot be
    written at ``path`` because it is a folder (``example``: a file name to suggest), and
    FileNotFoundError (``files.check_output_folder``) when its folder does not exist."""
    if Path(path).is_dir():
        raise ValueError(f"{option} {path}: is a folder; name a file in it, such as {example}")
    check_output_folder(path, option)


def refuse_existing(path: str | None, option: str, overwrite: bool) -> None:
    """Raise ValueError (one line, naming ``option`` and ``path``) when a file is at ``path``
    and ``overwrite`` is off (it holds an earlier run's results), and whatever ``overwrite``
    says when a FIFO, device or dangling link is there. None (not given) passes."""
    if path is None or not os.path.lexists(path) or Path(path).is_dir():  # a folder: later
        return
    if not Path(path).is_file():
        raise ValueError(f"{option} {path}: is there and is not a regular file; name a file")
    if overwrite:
        return
    raise ValueError(
        f"{option} {path}: exists already (an earlier run's results); pass --overwrite to "
        f"replace it, or choose another {option}"
    )


#: formats that keep every frame's ``info`` (a structure's name, ``converged``, ``steps``)
#: and its calculator's results: ASE's json (a database) or cif would drop them unsaid
LABELLED_FORMATS = ("extxyz", "traj")


def check_frames_file(
    path: str, option: str, several: bool, append: bool = False, labelled: bool = False
) -> None:
    """Raise ValueError (one line, naming ``option`` and ``path``) when the frames a command
    will write cannot go there: a folder, a folder that does not exist (FileNotFoundError,
    ``check_output_file``), a name ASE cannot tell a format from, a format it only reads, a
    one-structure format (POSCAR, images) for ``several`` frames, with ``append`` (MD writes
    frame by frame) a format ASE cannot append to, or with ``labelled`` one that drops the
    frames' info and results (``LABELLED_FORMATS`` keep them). The commands call this before
    they run, so that a run is not lost at its end."""
    from ase.io.formats import filetype, ioformats

    check_output_file(path, option, "out.extxyz")
    try:
        name = filetype(path, read=False)
    except Exception:  # ASE raises UnknownFileTypeError or KeyError for unknown suffixes
        raise ValueError(
            f"{option} {path}: ASE cannot tell a file format from this name; give it a suffix "
            "such as .extxyz or .traj"
        ) from None
    writer = ioformats.get(name)
    if writer is None or not writer.can_write:
        raise ValueError(f"{option} {path}: ASE cannot write {name} files; use .extxyz or .traj")
    if several and writer.single:
        raise ValueError(
            f"{option} {path}: a {name} file holds one structure, and this writes several; "
            "use .extxyz or .traj"
        )
    if labelled and name not in LABELLED_FORMATS:
        raise ValueError(
            f"{option} {path}: a {name} file would drop each frame's name, convergence, "
            "steps and results; use .extxyz or .traj"
        )
    if append and name != "traj" and not (writer.acceptsfd or writer.can_append):
        raise ValueError(
            f"{option} {path}: ASE cannot add frames to a {name} file one by one; use .extxyz "
            "or .traj"
        )
