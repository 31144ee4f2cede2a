"""ASE frames whose pbc is not all True are skipped with a reason, not made into crystals."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from fastchgnet.data.ase_labels import read_ase_labelled
from fastchgnet.data.frame import check_frame
from fastchgnet.data.graph import build_graph
from fastchgnet.data.sources import read_ase
from fastchgnet.errors import StructureError


def _frames() -> list:
    crystal = bulk("Si", "diamond", a=5.43)
    methane = molecule("CH4")
    methane.cell, methane.pbc = [3.0, 3.0, 3.0], False
    methane.center()
    slab = bulk("Si", "diamond", a=5.43)
    slab.pbc = [True, True, False]
    for atoms, energy in ((crystal, -10.8), (methane, -24.0), (slab, -10.7)):
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((len(atoms), 3)))
    return [crystal, methane, slab]


@pytest.mark.parametrize("reader", ["file", "atoms"])
def test_frames_not_periodic_in_all_three_directions_have_a_problem(tmp_path, reader):
    path = tmp_path / "mixed.extxyz"
    write(path, _frames())
    frames = list(read_ase_labelled(path) if reader == "file" else read_ase(_frames()))
    assert frames[0].problem is None
    assert frames[1].problem.startswith("pbc (F, F, F): CHGNet models periodic crystals")
    assert frames[2].problem.startswith("pbc (T, T, F)")
    with pytest.raises(StructureError, match=r"H4C.*pbc \(F, F, F\)"):
        check_frame(frames[1])


def test_build_graph_refuses_a_bond_across_an_axis_that_is_not_periodic():
    with pytest.raises(StructureError, match=r"methane.*across axis 0, along which it is not"):
        build_graph(_frames()[1], name="methane")
