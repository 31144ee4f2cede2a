"""A frame that cannot be trained on is skipped with its reason and the others are kept,
whatever its source: a label that is not a number in an extxyz, a disordered Structure given
to ``from_structures``; ASE Atoms are taken by ``from_structures`` as its docstring says; an
infinite label is reported as non-finite, not as a unit problem. Before, the first two ended
the whole conversion (``could not convert string to float: 'failed'``, ``AttributeError:
species property only supports ordered structures!``), Atoms were an AttributeError, and an
infinite stress read "stress up to inf GPa exceeds 1000 GPa: is stress_unit right?"."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from pymatgen.core import Lattice, Structure

from fastchgnet.data.ase_labels import AseLabels
from fastchgnet.data.convert import convert
from fastchgnet.data.frame import Frame, check_frame, implausible_labels
from fastchgnet.data.sources import from_structures, read_frames
from fastchgnet.errors import StructureError
from tests.data.frames import rock_salt


def _skipped(out):
    return json.loads((out / "skipped.json").read_text())


def test_a_label_that_is_not_a_number_skips_its_frame_alone(tmp_path):
    frames = []
    for energy in (-12.0, "failed", -12.0):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.info["REF_energy"] = energy
        frames.append(atoms)
    source = tmp_path / "strlabel.extxyz"
    write(source, frames)
    labels = AseLabels(energy="REF_energy", forces="", stress="", magmoms="")
    summary = convert(read_frames(source, labels=labels), tmp_path / "c", workers=1,
                      progress=False)  # fmt: skip
    assert summary.n_structures == 2
    [skip] = _skipped(tmp_path / "c")
    assert skip["frame_id"] == "strlabel-1"
    assert skip["reason"] == "label 'REF_energy' is 'failed', not a number"


def test_a_disordered_structure_is_skipped_and_atoms_are_taken(tmp_path):
    disordered = Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    copper = bulk("Cu", "fcc", a=3.6)
    copper.info["mp_id"] = "mp-30"
    items = [rock_salt(), disordered, copper, molecule("H2O")]
    frames = from_structures(items, energies=[-3.0] * 4)
    summary = convert(frames, tmp_path / "c", workers=1, progress=False)
    assert summary.n_structures == 2
    reasons = {skip["frame_id"]: skip["reason"] for skip in _skipped(tmp_path / "c")}
    assert "disordered (partial occupancies)" in reasons["1"]
    assert "no periodic cell" in reasons["3"]


def test_from_structures_refuses_what_is_no_structure_in_one_line():
    with pytest.raises(ValueError, match=r"structures\[1\]: expected a pymatgen Structure or "):
        list(from_structures([rock_salt(), "POSCAR"]))


@pytest.mark.parametrize("label", ["energy_per_atom", "stress"])
def test_an_infinite_label_is_non_finite_not_a_unit_problem(label):
    value = np.inf if label == "energy_per_atom" else np.diag([np.inf, 0.0, 0.0])
    frame = Frame(rock_salt(), **{label: value})
    assert implausible_labels(frame) is None
    with pytest.raises(StructureError, match=r"non-finite|is inf"):
        check_frame(frame)


#: three lines a frame (count, comment, one atom): frame 1's atom, then its count line
BROKEN = {
    "element": (5, "Xx 0.0 0.0 0.0 0.0 0.0 0.0", "frame 1 (x-1): 'Xx'"),
    "column": (5, "Cu 0.0 0.0 0.0 0.0 0.0", "frame 1 (x-1): "),
    "count": (3, "2", "frame 1 (x-1): line 4 says 2 atoms, 1 atom lines follow (line 7 is"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_an_extxyz_frame_ase_cannot_read_skips_it_alone_and_the_next_are_read(
    tmp_path, capsys, kind
):
    """An unknown element, a missing column, fewer atom lines than the count says: the frame
    is skipped and named, and the good frame after it is converted. Before, reading stopped
    there and the frames after it were in neither count of the console's summary."""
    from fastchgnet.cli import main
    from fastchgnet.data.cache import GraphDataset

    frames = []
    for k in range(3):
        atoms = bulk("Cu", "fcc", a=3.6)
        atoms.calc = SinglePointCalculator(atoms, energy=-3.0 - k, forces=np.zeros((1, 3)))
        frames.append(atoms)
    source = tmp_path / "x.extxyz"
    write(source, frames)
    lines = source.read_text().splitlines()
    line, text, reason = BROKEN[kind]
    lines[line] = text
    source.write_text("\n".join(lines) + "\n")
    assert main(["data", "convert", str(source), "-o", str(tmp_path / "c")]) == 0
    assert "converted 2 structures" in capsys.readouterr().out
    assert len(GraphDataset(tmp_path / "c")) == 2
    [skip] = _skipped(tmp_path / "c")
    assert skip["frame_id"] == "x-1"
    assert f"ASE cannot read {reason}" in skip["reason"]
    assert "the frames after it are not read" not in skip["reason"]
