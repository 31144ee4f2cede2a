"""The material id of an ASE frame comes from info's or an ASE-db row's material_id / mp_id."""

from __future__ import annotations

import numpy as np
from ase.build import bulk
from ase.db import connect
from ase.io import write

from fastchgnet.data.ase_labels import AseLabels, read_ase_labelled


def test_ase_db_rows_keep_their_material_id_key_value(tmp_path):
    db = connect(str(tmp_path / "t2.db"))
    for k in range(2):
        atoms = bulk("Al", "fcc", a=4.05)
        db.write(atoms, E_dft=-3.7, material_id=f"al-{k}", data={"F": np.zeros((1, 3))})
    db.write(bulk("Al", "fcc", a=4.1), E_dft=-3.6, mp_id="mp-134")
    db.write(bulk("Al", "fcc", a=4.2), E_dft=-3.5)
    labels = AseLabels(energy="E_dft", forces="F")
    ids = [frame.material_id for frame in read_ase_labelled(tmp_path / "t2.db", labels)]
    assert ids == ["al-0", "al-1", "mp-134", "t2:Al"]


def test_extxyz_info_material_id_names_the_material(tmp_path):
    first, second = bulk("Al", "fcc", a=4.05), bulk("Al", "fcc", a=4.1)
    first.info["material_id"], second.info["mp_id"] = "al-0", "mp-134"
    write(tmp_path / "al.extxyz", [first, second])
    ids = [frame.material_id for frame in read_ase_labelled(tmp_path / "al.extxyz")]
    assert ids == ["al-0", "mp-134"]
