"""Sources of labelled frames: MPtrj JSON, ASE-readable files, VASP runs, in-memory Structures.

Every reader yields ``Frame`` objects with labels in our units, converted here, once:
energy eV/atom, forces eV/Å, stress GPa with CHGNet's sign, magnetic moments |μB|. A label
that the source lacks is ``None`` (masked downstream), never zero. Readers do not judge frames:
``check_frame`` does, and ``data.cache.convert`` skips and lists the frames it rejects.
"""

from __future__ import annotations

import gzip
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pymatgen.core import Lattice, Structure

from fastchgnet.data.ase_labels import read_ase_labelled
from fastchgnet.data.frame import Frame
from fastchgnet.units import EV_PER_A3_TO_GPA, KBAR_TO_GPA

#: MPtrj energy fields we can train on. CHGNet 0.3.0 was trained on ``corrected_total_energy``
#: (total energy with the MP2020 compatibility corrections) divided by the number of atoms.
#: ``energy_per_atom`` is MPtrj's uncorrected energy per atom; ``uncorrected_total_energy`` is
#: the raw VASP total energy (divided by the number of atoms here).
MPTRJ_ENERGY_KEYS = {
    "corrected_total_energy": True,  # True: a total, divide by n_atoms
    "uncorrected_total_energy": True,
    "energy_per_atom": False,
}


def _array(values: object) -> np.ndarray | None:
    """float64 array of a label, or None when the label is absent."""
    return None if values is None else np.asarray(values, dtype=np.float64)


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def read_mptrj(path: str | Path, energy_key: str = "corrected_total_energy") -> Iterator[Frame]:
    """Stream frames from an MPtrj JSON file (optionally .gz), one material at a time.

    The file ``{material_id: {frame_id: {"structure", "force", "stress", "magmom", ...}}}`` is
    read with ijson, so memory holds one material's frames, whatever the file size.
    Stress in kBar (VASP sign) becomes GPa (CHGNet sign) by ``KBAR_TO_GPA``; ``magmom: null``
    becomes ``None``; magnetic moments are made absolute.

    Args:
        path: the JSON file.
        energy_key: one of ``MPTRJ_ENERGY_KEYS``; totals are divided by the number of atoms.
    """
    import ijson

    if energy_key not in MPTRJ_ENERGY_KEYS:
        raise ValueError(f"energy_key {energy_key!r} not one of {sorted(MPTRJ_ENERGY_KEYS)}")
    path = Path(path)
    with _open_binary(path) as handle:
        for material_id, frames in ijson.kvitems(handle, "", use_float=True):
            for frame_id, record in frames.items():
                yield _mptrj_frame(record, str(material_id), str(frame_id), energy_key)


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


def _mptrj_frame(record: dict, material_id: str, frame_id: str, energy_key: str) -> Frame:
    structure = _structure_from_dict(record["structure"])
    n_atoms = len(structure)
    energy = record.get(energy_key)
    if energy is not None and MPTRJ_ENERGY_KEYS[energy_key]:
        energy = energy / n_atoms
    stress = _array(record.get("stress"))
    magmoms = _array(record.get("magmom"))
    return Frame(
        structure=structure,
        energy_per_atom=None if energy is None else float(energy),
        forces=_array(record.get("force")),
        stress=None if stress is None else stress * KBAR_TO_GPA,
        magmoms=None if magmoms is None else np.abs(magmoms),
        material_id=material_id,
        frame_id=frame_id,
    )


def read_ase(
    path_or_atoms: str | Path | Sequence[object], index: str | int = ":"
) -> Iterator[Frame]:
    """Frames from anything ``ase.io.read`` reads (extxyz, ASE db, traj) or a list of Atoms.

    Labels come from each Atoms' calculator results (energy total -> per atom; forces; stress;
    magmoms). ASE stress is (1/V) dE/dε in eV/Å^3, Voigt order xx yy zz yz xz xy; CHGNet stress
    has the *same* sign: chgnet's own ``CHGNetCalculator`` (chgnet/model/dynamics.py) returns
    ``stress_GPa * ase.units.GPa`` with no sign flip, and chgnet's model computes
    ``1/V dE/dε * 160.21766208``. So GPa = ASE stress x ``EV_PER_A3_TO_GPA``.

    ``material_id`` is ``atoms.info["material_id"]`` (or ``mp_id``) where given, else
    ``"<file stem>:<reduced formula>"`` so that frames of one composition stay in one split.
    """
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    if isinstance(path_or_atoms, (str, Path)):
        stem = Path(path_or_atoms).stem
        with tempfile.TemporaryDirectory() as scratch:
            plain = gunzip_ase_file(Path(path_or_atoms), Path(scratch))
            images = read(str(plain), index=index)
        images = images if isinstance(images, list) else [images]
    else:
        stem, images = "atoms", list(path_or_atoms)
    for position, atoms in enumerate(images):
        structure = AseAtomsAdaptor.get_structure(atoms)
        info = atoms.info
        material_id = info.get("material_id", info.get("mp_id"))
        if material_id is None:
            material_id = f"{stem}:{structure.composition.reduced_formula}"
        energy = _ase_result(atoms, "energy")
        stress = _ase_result(atoms, "stress")
        if stress is not None and stress.shape == (6,):
            from ase.stress import voigt_6_to_full_3x3_stress

            stress = voigt_6_to_full_3x3_stress(stress)
        magmoms = _ase_result(atoms, "magmoms")
        yield Frame(
            structure=structure,
            energy_per_atom=None if energy is None else float(energy) / len(atoms),
            forces=_ase_result(atoms, "forces"),
            stress=None if stress is None else stress * EV_PER_A3_TO_GPA,
            magmoms=None if magmoms is None else np.abs(magmoms),
            material_id=str(material_id),
            frame_id=str(info.get("frame_id", f"{stem}-{position}")),
        )


def gunzip_ase_file(source: Path, scratch: Path) -> Path:
    """A gzip-compressed ASE file (e.g. .extxyz.gz) decompressed into ``scratch``; any other
    source unchanged. ASE's extxyz reader seeks back to each frame, which in a gzip stream
    means decompressing from the start again: quadratic, minutes for a 2000-frame file, a
    fraction of a second once decompressed."""
    name = source.name.lower()
    if not name.endswith(".gz") or name.endswith(".json.gz") or not source.is_file():
        return source
    plain = scratch / source.name[: -len(".gz")]
    with gzip.open(source, "rb") as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return plain


def _ase_result(atoms: object, key: str) -> np.ndarray | None:
    calc = getattr(atoms, "calc", None)
    value = None if calc is None else calc.results.get(key)
    return None if value is None else np.array(value, dtype=np.float64)


def read_vasp(run: str | Path, *, skip_unconverged: bool = True) -> Iterator[Frame]:
    """Frames of every ionic step of a VASP run: a directory or a .zip holding one.

    Conventions as chgnet's ``parse_vasp_dir``: energy sigma -> 0 per atom (``ionic_step_energy``:
    ``e_0_energy`` with the fix for VASP's vasprun.xml bug that chgnet lacks), forces from
    vasprun.xml, stress kBar -> GPa by ``KBAR_TO_GPA``, magnetic moments per step
    from the OUTCAR ``magnetization (x)`` tables (``tot`` column; made absolute) where
    present. Steps whose electronic loop hit NELM are skipped (with a warning) when
    ``skip_unconverged``, as chgnet does by default.
    """
    run = Path(run)
    if run.suffix == ".zip":
        with tempfile.TemporaryDirectory(prefix="fastchgnet-vasp-") as tmp:
            with zipfile.ZipFile(run) as archive:
                archive.extractall(tmp)
            yield from _read_vasp_dir(_find_run_dir(Path(tmp), run), run.stem, skip_unconverged)
    elif run.is_dir():
        yield from _read_vasp_dir(run, run.name, skip_unconverged)
    elif run.name.startswith("vasprun"):
        yield from _read_vasp_dir(run.parent, run.parent.name, skip_unconverged)
    else:
        raise FileNotFoundError(f"{run}: not a VASP run directory, vasprun.xml or .zip")


def _find_run_dir(root: Path, archive: Path) -> Path:
    found = sorted(p.parent for p in root.rglob("vasprun.xml*") if "__MACOSX" not in p.parts)
    if not found:
        raise FileNotFoundError(f"{archive}: no vasprun.xml inside the archive")
    return found[0]


def _read_vasp_dir(run_dir: Path, run_name: str, skip_unconverged: bool) -> Iterator[Frame]:
    from pymatgen.io.vasp.outputs import Vasprun

    vasprun_files = sorted(run_dir.glob("vasprun.xml*"))
    if not vasprun_files:
        raise FileNotFoundError(f"{run_dir}: no vasprun.xml")
    vasprun = Vasprun(
        str(vasprun_files[0]),
        parse_dos=False,
        parse_eigen=False,
        parse_projected_eigen=False,
        parse_potcar_file=False,
        exception_on_bad_xml=False,
    )
    steps = vasprun.ionic_steps
    magmoms = _outcar_magmoms(run_dir, len(steps), run_name)
    nelm = vasprun.parameters.get("NELM", 60)
    unconverged = []
    for step_index, step in enumerate(steps):
        if skip_unconverged and len(step["electronic_steps"]) >= nelm:
            unconverged.append(step_index)
            continue
        structure = step["structure"]
        stress = step.get("stress")
        yield Frame(
            structure=structure,
            energy_per_atom=ionic_step_energy(step) / len(structure),
            forces=_array(step.get("forces")),
            stress=None if stress is None else np.asarray(stress, dtype=np.float64) * KBAR_TO_GPA,
            magmoms=None if magmoms is None else np.abs(magmoms[step_index]),
            material_id=run_name,
            frame_id=f"{run_name}-{step_index}",
        )
    if unconverged:
        warnings.warn(
            f"{run_name}: skipped {len(unconverged)} ionic step(s) {unconverged[:10]} whose "
            f"electronic loop reached NELM={nelm} (not converged)",
            stacklevel=2,
        )


def ionic_step_energy(step: dict) -> float:
    """The sigma -> 0 energy (eV, total) of one pymatgen ``Vasprun.ionic_steps`` entry.

    Some VASP versions write a wrong ``e_0_energy`` at the end of each ionic step in
    vasprun.xml (in the reference data it holds the smearing entropy, about -0.25 eV for a
    -208.6 eV cell; https://www.vasp.at/forum/viewtopic.php?f=3&t=16942). The free energy
    ``e_fr_energy`` is right, and so is the last electronic step's ``e_0_energy - e_fr_energy``
    correction: their sum is the energy OSZICAR prints as E0. pymatgen applies this fix to
    ``Vasprun.final_energy`` only; here it applies to every step.
    """
    electronic = step.get("electronic_steps") or []
    if electronic and "e_fr_energy" in step:
        last = electronic[-1]
        if "e_0_energy" in last and "e_fr_energy" in last:
            return float(step["e_fr_energy"] + last["e_0_energy"] - last["e_fr_energy"])
    return float(step["e_0_energy"])


_ROW = re.compile(r"^\s*\d+\s+[-\d.\s]+$")


def _outcar_magmoms(run_dir: Path, n_steps: int, run_name: str) -> list[np.ndarray] | None:
    """Per-ionic-step ``tot`` magnetic moments from OUTCAR, or None when it has none."""
    outcar = sorted(run_dir.glob("OUTCAR*"))
    if not outcar:
        return None
    opener = gzip.open if outcar[0].suffix == ".gz" else open
    tables: list[np.ndarray] = []
    rows: list[float] | None = None
    with opener(outcar[0], "rt", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            text = line.strip()
            if text == "magnetization (x)":
                rows = []
            elif rows is not None:
                if text.startswith("tot"):
                    tables.append(np.array(rows, dtype=np.float64))
                    rows = None
                elif _ROW.match(text):
                    rows.append(float(text.split()[-1]))
    if not tables:
        return None
    if len(tables) == n_steps + 1:  # a finished run prints the last table once more
        tables = tables[:-1]
    if len(tables) != n_steps:
        warnings.warn(
            f"{run_name}: OUTCAR has {len(tables)} magnetization tables for {n_steps} ionic "
            "steps; magnetic moments left unlabelled",
            stacklevel=3,
        )
        return None
    return tables


def from_structures(
    structures: Sequence[Structure],
    energies: Sequence[float | None] | None = None,
    forces: Sequence[object] | None = None,
    stresses: Sequence[object] | None = None,
    magmoms: Sequence[object] | None = None,
) -> Iterator[Frame]:
    """Frames from in-memory pymatgen Structures and labels already in our units.

    Args:
        structures: the structures; ``properties["material_id"]`` is used where present.
        energies: eV/atom per structure (``None`` entries are unlabelled).
        forces: (n_atoms, 3) eV/Å per structure.
        stresses: (3, 3) GPa, CHGNet sign, per structure.
        magmoms: (n_atoms,) μB per structure (made absolute).
    """
    n = len(structures)
    for label, values in (
        ("energies", energies),
        ("forces", forces),
        ("stresses", stresses),
        ("magmoms", magmoms),
    ):
        if values is not None and len(values) != n:
            raise ValueError(f"{label} has {len(values)} entries for {n} structures")
    for i, structure in enumerate(structures):
        magmom = None if magmoms is None else _array(magmoms[i])
        energy = None if energies is None else energies[i]
        yield Frame(
            structure=structure,
            energy_per_atom=None if energy is None else float(energy),
            forces=None if forces is None else _array(forces[i]),
            stress=None if stresses is None else _array(stresses[i]),
            magmoms=None if magmom is None else np.abs(magmom),
            material_id=str(structure.properties.get("material_id", f"structure-{i}")),
            frame_id=str(i),
        )


def tag_split(frames: Iterable[Frame], split: str) -> Iterator[Frame]:
    """``frames`` with ids tagged as members of ``split`` ("train", "val" or "test"), for
    caches built from explicit split files (``data.split.split_by_tag`` reads the tags)."""
    from dataclasses import replace

    from fastchgnet.data.split import split_tag

    for frame in frames:
        yield replace(frame, frame_id=split_tag(split, frame.frame_id))


def read_frames(
    path: str | Path, energy_key: str = "corrected_total_energy", labels: object = None
) -> Iterable[Frame]:
    """Pick a reader by suffix: .json/.json.gz MPtrj; a directory, .zip or vasprun.xml VASP;
    anything else ``data.ase_labels.read_ase_labelled`` (streamed; ``labels``: its
    ``AseLabels``, key names and units)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".json", ".json.gz")):
        return read_mptrj(path, energy_key=energy_key)
    if path.is_dir() or name.endswith(".zip") or name.startswith("vasprun"):
        return read_vasp(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return read_ase_labelled(path, labels)  # type: ignore[arg-type]
