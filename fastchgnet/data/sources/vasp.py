"""VASP runs (a folder or a .zip of one or more, or one vasprun.xml file): every ionic step a
frame, energy from OSZICAR's E0, forces eV/Å, stress kBar (VASP sign) -> GPa x -0.1, magnetic
moments from the run's OUTCAR."""

from __future__ import annotations

import gzip
import re
import tempfile
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fastchgnet.data.frame import Frame, implausible_labels
from fastchgnet.data.sources.labels import label_array
from fastchgnet.units import KBAR_TO_GPA

#: the file names of a run's vasprun file (``vasprun.xml``, ``vasprun.xml.relax2``, ``.gz``)
VASPRUN = "vasprun.xml*"


def read_vasp(run: str | Path, *, skip_unconverged: bool = True) -> Iterator[Frame]:
    """Frames of every ionic step of VASP runs: one vasprun file (that file, with its OUTCAR),
    or a folder or .zip holding one run or several (every run, each in its own folder).

    Conventions as chgnet's ``parse_vasp_dir``: energy sigma -> 0 per atom (``ionic_step_energy``:
    ``e_0_energy`` with the fix for VASP's vasprun.xml bug that chgnet lacks), forces from
    vasprun.xml, stress kBar -> GPa by ``KBAR_TO_GPA``, magnetic moments per step
    from the OUTCAR ``magnetization (x)`` tables (``tot`` column; made absolute) where
    present (``outcar_of``). Steps whose electronic loop hit NELM are skipped (with a warning)
    when ``skip_unconverged``, as chgnet does by default. A step with implausible labels
    (``implausible_labels``) is a frame with a ``problem``, as from every source.

    Material id: the folder's name (a .zip's stem); with several runs, that name and the
    run's folder within it (``runs/a_licl``).

    Raises:
        FileNotFoundError: no vasprun file there.
        ValueError: a damaged .zip (truncated, not a zip), or one line naming the files, where
            one folder holds several vasprun files
            (which of them is the run is unclear: name one) or a vasprun file has several
            OUTCARs of its name (``outcar_of``).
    """
    run = Path(run).resolve()  # a relative path ("vasprun.xml", ".") has a folder name too
    if run.suffix == ".zip":
        with tempfile.TemporaryDirectory(prefix="fastchgnet-vasp-") as tmp:
            try:
                with zipfile.ZipFile(run) as archive:
                    archive.extractall(tmp)
            except (zipfile.BadZipFile, EOFError, zlib.error) as error:
                raise ValueError(f"{run}: not a readable zip archive ({error})") from None
            for vasprun, name in vasp_runs(Path(tmp), run.stem, shown_as=run):
                yield from _read_run(vasprun, name, skip_unconverged)
    elif run.is_dir():
        for vasprun, name in vasp_runs(run, run.name, shown_as=run):
            yield from _read_run(vasprun, name, skip_unconverged)
    elif run.is_file() and run.name.startswith("vasprun"):
        yield from _read_run(run, run.parent.name, skip_unconverged)
    else:
        raise FileNotFoundError(f"{run}: not a VASP run directory, vasprun.xml or .zip")


def _what_it_holds(root: Path) -> str:
    """What a folder without a VASP run holds, in words for its message, and what a source
    is: " (it holds 12 .cif); a data source is ..."."""
    kinds = Counter(p.suffix.lower() or p.name for p in root.rglob("*") if p.is_file())
    held = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common(3))
    return (
        f" ({f'it holds {held}' if held else 'it is empty'}); a data source is a VASP run "
        "folder or .zip, an MPtrj .json or one labelled ASE file (extxyz, .traj, .db): "
        "structures alone (CIF, POSCAR) carry no energies or forces to train on"
    )


def vasp_runs(root: Path, name: str, shown_as: Path) -> list[tuple[Path, str]]:
    """(vasprun file, material id) of every run under the folder ``root`` (one vasprun file
    per folder; ``__MACOSX`` skipped), sorted by folder; ``name`` is the material id of a
    single run, ``name/<folder>`` of each of several. ``shown_as``: ``root`` in messages
    (the .zip an archive was unpacked from).

    Raises:
        FileNotFoundError: no vasprun file under ``root``.
        ValueError: one line naming the files of a folder that holds several.
    """
    files = [p for p in root.rglob(VASPRUN) if p.is_file() and "__MACOSX" not in p.parts]
    folders = sorted({p.parent for p in files})
    if not folders:
        raise FileNotFoundError(f"{shown_as}: no vasprun.xml in it{_what_it_holds(root)}")
    runs = []
    for folder in folders:
        found = sorted(p.name for p in folder.glob(VASPRUN) if p.is_file())
        where = shown_as / folder.relative_to(root)
        if len(found) > 1:
            raise ValueError(
                f"{where}: {len(found)} vasprun files ({', '.join(found)}), which one is the "
                f"run is unclear; name one (e.g. {where / found[0]}), or keep one run per folder"
            )
        relative = folder.relative_to(root).as_posix()
        single = len(folders) == 1 or relative == "."
        runs.append((folder / found[0], name if single else f"{name}/{relative}"))
    return runs


def outcar_of(vasprun: Path) -> Path | None:
    """The OUTCAR of the run in ``vasprun``: beside it with the same suffix
    (``vasprun.xml.relax2`` -> ``OUTCAR.relax2``, ``.gz`` or not), or the folder's only OUTCAR
    where it holds one vasprun file; else None (with a warning when OUTCARs of other names are
    there: magnetic moments are then left unlabelled).

    Raises:
        ValueError: two OUTCARs of its name (``OUTCAR`` and ``OUTCAR.gz``), naming them.
    """
    folder = vasprun.parent
    outcars = sorted(p for p in folder.glob("OUTCAR*") if p.is_file())
    base = vasprun.name.removesuffix(".gz")
    if base.startswith("vasprun.xml"):
        suffix = base[len("vasprun.xml") :]
        mine = [p for p in outcars if p.name in (f"OUTCAR{suffix}", f"OUTCAR{suffix}.gz")]
        if len(mine) > 1:
            raise ValueError(
                f"{vasprun}: {' and '.join(p.name for p in mine)} both beside it; which holds "
                "its magnetic moments is unclear: keep one"
            )
        if mine:
            return mine[0]
    if len(outcars) == 1 and len([p for p in folder.glob(VASPRUN) if p.is_file()]) == 1:
        return outcars[0]
    if outcars:
        warnings.warn(
            f"{vasprun}: no OUTCAR of its name beside it (there: "
            f"{', '.join(p.name for p in outcars)}); magnetic moments left unlabelled",
            stacklevel=3,
        )
    return None


def _read_run(vasprun_file: Path, run_name: str, skip_unconverged: bool) -> Iterator[Frame]:
    from pymatgen.io.vasp.outputs import Vasprun

    outcar = outcar_of(vasprun_file)
    vasprun = Vasprun(
        str(vasprun_file),
        parse_dos=False,
        parse_eigen=False,
        parse_projected_eigen=False,
        parse_potcar_file=False,
        exception_on_bad_xml=False,
    )
    steps = vasprun.ionic_steps
    magmoms = None if outcar is None else _outcar_magmoms(outcar, len(steps), run_name)
    nelm = vasprun.parameters.get("NELM", 60)
    unconverged = []
    for step_index, step in enumerate(steps):
        if skip_unconverged and len(step["electronic_steps"]) >= nelm:
            unconverged.append(step_index)
            continue
        structure = step["structure"]
        stress = step.get("stress")
        frame = Frame(
            structure=structure,
            energy_per_atom=ionic_step_energy(step) / len(structure),
            forces=label_array(step.get("forces")),
            stress=None if stress is None else np.asarray(stress, dtype=np.float64) * KBAR_TO_GPA,
            magmoms=None if magmoms is None else np.abs(magmoms[step_index]),
            material_id=run_name,
            frame_id=f"{run_name}-{step_index}",
        )
        frame.problem = implausible_labels(
            frame, energy_hint="an unconverged or broken ionic step?"
        )
        yield frame
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


def _outcar_magmoms(outcar: Path, n_steps: int, run_name: str) -> list[np.ndarray] | None:
    """Per-ionic-step ``tot`` magnetic moments from ``outcar``, or None when it has none."""
    opener = gzip.open if outcar.suffix == ".gz" else open
    tables: list[np.ndarray] = []
    rows: list[float] | None = None
    with opener(outcar, "rt", encoding="utf-8", errors="replace") as handle:
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
