"""Frames from anything ``ase.io`` reads (extxyz, ASE db, traj) or a list of Atoms, labels from
the calculator results; and the gunzip step ASE's readers need."""

from __future__ import annotations

import gzip
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastchgnet.data.frame import Frame, ase_material_id, implausible_labels, periodic_structure
from fastchgnet.files import atomic_open
from fastchgnet.units import EV_PER_A3_TO_GPA


def read_ase(
    path_or_atoms: str | Path | Sequence[object], index: str | int = ":"
) -> Iterator[Frame]:
    """Frames from anything ``ase.io.read`` reads (extxyz, ASE db, traj) or a list of Atoms.

    Labels come from each Atoms' calculator results (energy total -> per atom; forces; stress;
    magmoms). ASE stress is (1/V) dE/dε in eV/Å^3, Voigt order xx yy zz yz xz xy; CHGNet stress
    has the *same* sign: chgnet's own ``CHGNetCalculator`` (chgnet/model/dynamics.py) returns
    ``stress_GPa * ase.units.GPa`` with no sign flip, and chgnet's model computes
    ``1/V dE/dε * 160.21766208``. So GPa = ASE stress x ``EV_PER_A3_TO_GPA``.

    ``material_id``: ``frame.ase_material_id`` (``atoms.info["material_id"]`` or ``mp_id``,
    else ``"<file stem>:<reduced formula>"``).
    A frame without a periodic cell or with implausible labels (``implausible_labels``) has a
    ``problem``.
    """
    if isinstance(path_or_atoms, (str, Path)):
        stem = Path(path_or_atoms).stem
        images = read_atoms(Path(path_or_atoms), index)
    else:
        stem, images = "atoms", list(path_or_atoms)
    for position, atoms in enumerate(images):
        structure, problem = periodic_structure(atoms)
        info = atoms.info
        energy = _ase_result(atoms, "energy")
        stress = _ase_result(atoms, "stress")
        if stress is not None and stress.shape == (6,):
            from ase.stress import voigt_6_to_full_3x3_stress

            stress = voigt_6_to_full_3x3_stress(stress)
        magmoms = _ase_result(atoms, "magmoms")
        frame = Frame(
            structure=structure,
            energy_per_atom=None if energy is None else float(energy) / len(atoms),
            forces=_ase_result(atoms, "forces"),
            stress=None if stress is None else stress * EV_PER_A3_TO_GPA,
            magmoms=None if magmoms is None else np.abs(magmoms),
            material_id=ase_material_id(atoms, stem),
            frame_id=str(info.get("frame_id", f"{stem}-{position}")),
        )
        frame.problem = problem or implausible_labels(frame)
        yield frame


def read_atoms(path: Path, index: str | int = ":") -> list[Any]:
    """The Atoms ``ase.io.read`` finds in ``path`` at ``index``, as a list; a gzipped file
    is read from one decompressed copy (``gunzip_ase_file``), removed afterwards. A POSCAR's
    lines are checked first (``data.poscar.check_poscar``: a ValueError naming the file and line).
    """
    from ase.io import read

    from fastchgnet.data.poscar import check_poscar

    check_poscar(path)
    with tempfile.TemporaryDirectory() as scratch:
        plain = str(gunzip_ase_file(path, Path(scratch)))  # a name may hold "@": not an index
        images = read(plain, index=index, do_not_split_by_at_sign=True)
    return images if isinstance(images, list) else [images]


def gunzip_ase_file(source: Path, scratch: Path) -> Path:
    """A gzip-compressed ASE file (e.g. .extxyz.gz) decompressed into ``scratch``; any other
    source unchanged. ASE's extxyz reader seeks back to each frame, which in a gzip stream
    means decompressing from the start again: quadratic, minutes for a 2000-frame file, a
    fraction of a second once decompressed."""
    name = source.name.lower()
    if not name.endswith(".gz") or name.endswith(".json.gz") or not source.is_file():
        return source
    plain = scratch / source.name[: -len(".gz")]
    # atomic: another process reading ``plain`` (parallel bench seeds share ``scratch``) sees
    # the old whole file or the new one, never a half-written one
    try:
        with gzip.open(source, "rb") as src, atomic_open(plain) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:  # truncated or not gzip
        raise ValueError(f"{source}: not a readable gzip file ({error})") from None
    return plain


def _ase_result(atoms: object, key: str) -> np.ndarray | None:
    calc = getattr(atoms, "calc", None)
    value = None if calc is None else calc.results.get(key)
    return None if value is None else np.array(value, dtype=np.float64)
