"""VASP runs (a folder, a .zip of one, or vasprun.xml): every ionic step a frame, energy from
OSZICAR's E0, forces eV/Å, stress kBar (VASP sign) -> GPa x -0.1, magnetic moments from OUTCAR."""

from __future__ import annotations

import gzip
import re
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fastchgnet.data.frame import Frame, implausible_labels
from fastchgnet.data.sources.labels import label_array
from fastchgnet.units import KBAR_TO_GPA


def read_vasp(run: str | Path, *, skip_unconverged: bool = True) -> Iterator[Frame]:
    """Frames of every ionic step of a VASP run: a directory or a .zip holding one.

    Conventions as chgnet's ``parse_vasp_dir``: energy sigma -> 0 per atom (``ionic_step_energy``:
    ``e_0_energy`` with the fix for VASP's vasprun.xml bug that chgnet lacks), forces from
    vasprun.xml, stress kBar -> GPa by ``KBAR_TO_GPA``, magnetic moments per step
    from the OUTCAR ``magnetization (x)`` tables (``tot`` column; made absolute) where
    present. Steps whose electronic loop hit NELM are skipped (with a warning) when
    ``skip_unconverged``, as chgnet does by default. A step with implausible labels
    (``implausible_labels``) is a frame with a ``problem``, as from every source.
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
