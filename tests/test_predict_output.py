"""What predict writes: JSON or ASE frames, the finished structures when stopped by a signal,
nothing more, quietly, when its reader is gone."""

from __future__ import annotations

import json
import signal

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


@pytest.mark.parametrize("name", ["p.csv", "p.vasp"])
def test_predict_refuses_an_output_it_cannot_write_before_the_run(tmp_path, capsys, name):
    (path,) = write_structures(tmp_path, 1)
    assert main(["predict", path, "-o", str(tmp_path / name), "--model", "nowhere.pt"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert f"-o {tmp_path / name}: " in err
    assert err.endswith("use .extxyz or .traj, or .json for JSON records")
    assert not (tmp_path / name).exists()
