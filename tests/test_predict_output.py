"""What predict writes: JSON or ASE frames, the finished structures when stopped by a signal,
nothing more, quietly, when its reader is gone."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from fastchgnet.cli import main
from fastchgnet.model.potential import EagerPotential

ROCKSALT = Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def write_structures(folder, count: int) -> list[str]:
    paths = []
    for k in range(count):
        path = folder / f"s{k}.cif"
        ROCKSALT.scale_lattice(ROCKSALT.volume * (1 + 0.05 * k)).to(filename=str(path))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize(
    ("stop", "code"),
    [(KeyboardInterrupt, 130), (lambda: SystemExit(128 + signal.SIGTERM), 143)],
    ids=["sigint", "sigterm"],
)
def test_a_stopped_predict_writes_the_structures_finished_and_says_how_many(
    tmp_path, capsys, monkeypatch, model, stop, code
):
    calls = []
    predict_graphs = EagerPotential.predict_graphs

    def stopped_at_the_third_batch(self, graphs, **options):
        calls.append(len(graphs))
        if len(calls) == 3:
            raise stop()  # what stop_signals raises for SIGINT / SIGTERM
        return predict_graphs(self, graphs, **options)

    monkeypatch.setattr(EagerPotential, "predict_graphs", stopped_at_the_third_batch)
    out = tmp_path / "p.json"
    paths = write_structures(tmp_path, 4)
    assert main(["predict", *paths, "-o", str(out), "--batch-size", "1"]) == code
    records = json.loads(out.read_text())
    assert len(records) == 2
    assert {r["name"] for r in records} <= {f"s{k}.cif" for k in range(4)}
    err = capsys.readouterr().err.strip()
    assert err == f"predict interrupted: 2 of 4 structures predicted, written to {out}"


def test_predict_into_a_closed_pipe_ends_quietly_without_a_traceback(tmp_path):
    import subprocess
    import sys

    (path,) = write_structures(tmp_path, 1)
    command = [sys.executable, "-m", "fastchgnet", "predict", path]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # the reader is gone (``| head -1`` done) before anything is printed
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 128 + signal.SIGPIPE
    assert "Traceback" not in err, err
    assert "BrokenPipeError" not in err, err


def test_predict_to_extxyz_writes_frames_with_the_json_numbers_in_ases_units(tmp_path, model):
    import numpy as np
    from ase import units
    from ase.io import read

    paths = write_structures(tmp_path, 2)
    assert main(["predict", *paths, "-o", str(tmp_path / "p.json")]) == 0
    assert main(["predict", *paths, "-o", str(tmp_path / "p.extxyz")]) == 0
    records = json.loads((tmp_path / "p.json").read_text())
    frames = read(tmp_path / "p.extxyz", ":")
    assert [f.info["name"] for f in frames] == [r["name"] for r in records] == ["s0.cif", "s1.cif"]
    for frame, record in zip(frames, records, strict=True):
        energy = record["energy_per_atom_eV"]
        assert frame.info["energy_per_atom"] == pytest.approx(energy, rel=1e-6)
        assert frame.get_potential_energy() == pytest.approx(energy * len(frame), rel=1e-6)
        np.testing.assert_allclose(frame.get_forces(), record["forces_eV_per_A"], atol=1e-6)
        stress = np.array(record["stress_GPa"]) * units.GPa
        np.testing.assert_allclose(frame.get_stress(voigt=False), stress, atol=1e-8)
        np.testing.assert_allclose(frame.get_magnetic_moments(), record["magmoms_muB"], atol=1e-6)


@pytest.mark.parametrize("name", ["p.csv", "p.vasp", "p.cif", "p.pdb"])  # cif, pdb: no results kept
def test_predict_refuses_an_output_it_cannot_write_before_the_run(tmp_path, capsys, name):
    (path,) = write_structures(tmp_path, 1)
    assert main(["predict", path, "-o", str(tmp_path / name), "--model", "nowhere.pt"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert f"-o {tmp_path / name}: " in err
    assert err.endswith("use .extxyz or .traj, or .json for JSON records")
    assert not (tmp_path / name).exists()


ORDERED_SI_SI_NA = """data_x
_cell_length_a 6
_cell_length_b 6
_cell_length_c 6
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Si1 Si 0 0 0
Si2 Si 0.117 0.117 0.117
Na1 Na 0.25 0.25 0.25
"""


@pytest.mark.parametrize("suffix", ["cif", "extxyz"])
def test_json_records_name_the_species_and_position_of_every_row(tmp_path, model, suffix):
    """pymatgen reads this CIF as Na, Si, Si (not the file's Si, Si, Na): each record says which
    atom each row of forces and magmoms belongs to, so a reader in file order (ASE) pairs them."""
    from ase.io import read, write

    path = tmp_path / "ord.cif"
    path.write_text(ORDERED_SI_SI_NA)
    if suffix == "extxyz":  # an ASE file keeps its own order
        write(tmp_path / "ord.extxyz", read(path))
        path = tmp_path / "ord.extxyz"
    out = tmp_path / "p.json"
    assert main(["predict", str(path), "-o", str(out)]) == 0
    (record,) = json.loads(out.read_text())
    file_order = read(path)  # ASE: the file's order
    expected = model.predict_structure(file_order)
    rows = [  # each file atom's row, found by its species and position
        next(
            k
            for k, (symbol, position) in enumerate(
                zip(record["species"], record["positions_A"], strict=True)
            )
            if symbol == atom.symbol and np.allclose(position, atom.position, atol=1e-6)
        )
        for atom in file_order
    ]
    assert sorted(rows) == [0, 1, 2]
    if suffix == "cif":
        assert record["species"] == ["Na", "Si", "Si"]  # pymatgen's order, as chgnet's
    forces = np.array(record["forces_eV_per_A"])[rows]
    np.testing.assert_allclose(forces, expected["f"], rtol=1e-5, atol=1e-4)  # float32 sums
    np.testing.assert_allclose(np.array(record["magmoms_muB"])[rows], expected["m"], atol=1e-5)
