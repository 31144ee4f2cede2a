"""`fastchgnet data convert`: an extxyz file becomes a graph cache the dataset reads."""

from __future__ import annotations

import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from pymatgen.io.ase import AseAtomsAdaptor

from fastchgnet.cli import main
from fastchgnet.data.cache import GraphDataset
from fastchgnet.data.random_crystals import varied_structures


def test_data_convert_command_builds_a_readable_cache(tmp_path):
    frames = []
    for k, structure in enumerate(varied_structures(5, seed=9, max_atoms=12)):
        atoms = AseAtomsAdaptor.get_atoms(structure)
        n = len(atoms)
        atoms.calc = SinglePointCalculator(
            atoms, energy=-3.0 * n, forces=np.full((n, 3), 0.01 * k), stress=np.zeros(6)
        )
        frames.append(atoms)
    source = tmp_path / "frames.extxyz"
    write(source, frames)
    out = tmp_path / "cache"
    assert main(["data", "convert", str(source), "-o", str(out), "--workers", "1"]) == 0
    dataset = GraphDataset(out)
    assert len(dataset) == 5
    graph, labels = dataset[3]
    assert labels.energy_per_atom == -3.0
    np.testing.assert_allclose(labels.forces, 0.03)
    assert graph.n_atoms == len(frames[3])
