"""Messages name what went wrong where: a non-number MPtrj energy names its key, an
implausible VASP energy points at the ionic step, and stats of a graph cache says that it
reads frame sources."""

from __future__ import annotations

import numpy as np

from fastchgnet.cli import main
from fastchgnet.data.convert import convert
from fastchgnet.data.sources import read_mptrj
from tests.data.frames import mptrj_record, rock_salt, write_mptrj


def test_a_string_energy_in_mptrj_names_its_key(tmp_path):
    bad = mptrj_record(rock_salt(0), seed=0)
    bad["corrected_total_energy"] = "-10.5"
    ragged = mptrj_record(rock_salt(1), seed=1)
    ragged["force"] = [[0.0, 0.0], [1.0]]
    path = write_mptrj(tmp_path / "s.json", {"mp-1": {"a": bad, "b": ragged}})
    first, second = read_mptrj(path)
    assert first.problem.startswith(
        "unreadable label 'corrected_total_energy' = '-10.5' (TypeError: a str, not a number)"
    )
    assert second.problem.startswith("unreadable label 'force' = [[0.0, 0.0], [1.0]] (")


def test_an_implausible_vasp_energy_points_at_the_ionic_step(monkeypatch):
    import fastchgnet.data.sources.vasp as vasp
    from tests.data.test_sources import reference_run

    monkeypatch.setattr(vasp, "ionic_step_energy", lambda step: -1e5)  # eV: -3125 eV/atom
    frame = next(vasp.read_vasp(reference_run("parse-vasp-no-magmoms")))
    assert frame.problem.endswith("eV/atom: an unconverged or broken ionic step?")


def test_stats_of_a_graph_cache_says_it_reads_frame_sources(tmp_path, capsys):
    frames = read_mptrj(write_mptrj(tmp_path / "m.json", {"mp-1": {"a": mptrj_record(
        rock_salt(0), seed=0)}}))  # fmt: skip
    convert(frames, tmp_path / "c", workers=1, progress=False)
    assert main(["data", "stats", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "c: a graph cache (it has manifest.json); data stats reads frame sources" in err
    assert np.char.count(err.strip(), "\n") == 0
