"""What predict writes: the finished structures when stopped by a signal; nothing more,
quietly, when its reader is gone."""

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
