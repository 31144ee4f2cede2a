"""A cache whose frames all belong to one material has no training split when split by
material: the message says so and names data.split_by=frame_tail, and points at skipped.json
only when that lists frames."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from fastchgnet.data.convert import convert
from fastchgnet.data.sources import read_frames
from fastchgnet.train.run import train
from tests.train.helpers import tiny_config


def test_one_material_cache_names_the_split_by_material_and_its_cure(tmp_path):
    frames = []
    for seed in range(12):
        atoms = bulk("Si", "diamond", a=5.43)
        atoms.rattle(0.02, seed=seed)
        atoms.calc = SinglePointCalculator(atoms, energy=-10.8, forces=np.zeros((2, 3)))
        frames.append(atoms)
    write(tmp_path / "big2.extxyz", frames)  # material id big2:Si: the seed-0 split puts it in val
    cache = tmp_path / "c"
    convert(read_frames(tmp_path / "big2.extxyz"), cache, workers=1, progress=False)
    config = tiny_config(cache, tmp_path / "run", "optim.epochs=1", "run.compile=off")
    with pytest.raises(ValueError, match=r"of 1 material id\(s\): 'big2:Si'") as error:
        train(config)
    assert "set data.split_by=frame_tail" in str(error.value)
    assert "skipped.json" not in str(error.value)
