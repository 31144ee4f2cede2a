"""A source whose labels point at a wrong unit is refused, not trained on.

A new-user tester wrote stresses in GPa into an extxyz file read as eV/Å^3 (160.2x too large):
conversion skipped the 23 of 40 frames beyond 1000 GPa and training went on with the 17 under
it, still 160x too large. A unit is per file: more than a quarter of the frames that carry a
label beyond its limit (``data.unit_check``) now stops conversion in one line naming the
source, the label, the count, the unit it was read in and the setting to check."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from pymatgen.io.ase import AseAtomsAdaptor

from fastchgnet.cli import main
from fastchgnet.data.cache import CacheError, GraphDataset
from fastchgnet.data.convert import convert
from fastchgnet.data.frame import Frame, implausible_labels
from fastchgnet.data.sources import from_structures
from tests.data.frames import rock_salt

#: stresses (GPa) of 12 frames: written as GPa numbers but read as eV/Å^3 (x 160.2), the six
#: from 7 GPa up are beyond 1000 GPa, the six below stay under it (up to 961 GPa)
GPA = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]


def _extxyz(path, stresses, energy_per_atom=-3.0):
    """Labelled rock-salt frames, one per entry of ``stresses`` (the number written for every
    diagonal component), each with ``energy_per_atom`` x 8 as its (total) energy."""
    frames = []
    for k, value in enumerate(stresses):
        atoms = AseAtomsAdaptor.get_atoms(rock_salt(k))
        n = len(atoms)
        stress = np.array([value, value, value, 0.0, 0.0, 0.0])
        atoms.calc = SinglePointCalculator(
            atoms, energy=energy_per_atom * n, forces=np.full((n, 3), 0.01), stress=stress
        )
        frames.append(atoms)
    write(path, frames)
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["data", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_line(err: str, prog: str) -> str:
    """The one error line of ``prog`` (after any progress bar's)."""
    lines = [line for line in err.splitlines() if line and "convert -> " not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


def test_a_file_whose_stresses_are_mostly_implausible_is_refused_naming_the_unit(tmp_path, capsys):
    source = _extxyz(tmp_path / "gpa.extxyz", GPA)
    out = tmp_path / "c"
    code, _, err = _run(capsys, "convert", str(source), "-o", str(out), "--workers", "1")
    assert code == 1
    line = _error_line(err, "fastchgnet data convert")
    assert f"{source.resolve()}: stress of 6 of 12 frames beyond the plausibility limit of " \
           "1000 GPa (largest 1923 GPa), read in eV/A^3: " in line  # fmt: skip
    assert "the other 6 cannot be trusted either" in line
    assert line.endswith("""check --labels '{"stress_unit": ...}' (eV/A^3, GPa or kBar)""")
    assert not out.exists()  # the folder this conversion made is gone
    labels = '{"stress_unit": "GPa"}'
    code, _, err = _run(
        capsys, "convert", str(source), "-o", str(out), "--workers", "1", "--labels", labels
    )
    assert code == 0, err
    assert len(GraphDataset(out)) == 12
    assert json.loads((out / "skipped.json").read_text()) == []


def test_a_few_implausible_stresses_are_skipped_not_refused(tmp_path, capsys):
    source = _extxyz(tmp_path / "two.extxyz", [0.01] * 10 + [20.0, 30.0])  # 2 of 12: 3204 GPa...
    out = tmp_path / "c"
    code, _, err = _run(capsys, "convert", str(source), "-o", str(out), "--workers", "1")
    assert code == 0, err
    assert len(GraphDataset(out)) == 10
    skipped = json.loads((out / "skipped.json").read_text())
    assert [s["frame_id"] for s in skipped] == ["two-10", "two-11"]
    assert skipped[0]["reason"].startswith("stress up to 3204 GPa exceeds 1000.0 GPa: read in")


def test_a_refused_unit_leaves_no_trusted_cache(tmp_path):
    """Several shards, one of them finished by an earlier conversion that broke off: the
    refusal counts the kept shard too (its shard.json), removes every shard and
    settings.json, and a folder that existed stays (empty of the cache)."""
    structures = [rock_salt(k) for k in range(8)]
    # 3 of 8 beyond, all in the first shard: the rebuilt second shard alone is clean
    stresses = [np.eye(3) * gpa for gpa in (2000.0, 2000.0, 3000.0, 1.0, 2.0, 3.0, 4.0, 5.0)]
    energies = [-5.0] * 8

    def broken():
        yield from from_structures(structures[:4], energies[:4], stresses=stresses[:4])
        raise ValueError("it breaks here")

    out = tmp_path / "c"
    out.mkdir()
    with pytest.raises(ValueError, match="it breaks here"):
        convert(broken(), out, workers=1, shard_size=4, progress=False)
    assert (out / "shard-00000" / "shard.json").is_file()  # kept for a rerun
    frames = from_structures(structures, energies, stresses=stresses)
    with pytest.raises(ValueError, match="stress") as refused:
        convert(frames, out, workers=1, shard_size=4, progress=False)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("the frames given: stress of 3 of 8 frames beyond the plaus")
    assert "taken in GPa" in message
    assert out.is_dir()
    assert sorted(p.name for p in out.iterdir()) == []
    with pytest.raises(CacheError, match=r"no manifest\.json"):
        GraphDataset(out)


def test_total_energies_read_as_per_atom_are_refused_naming_energy_per_atom(tmp_path, capsys):
    source = _extxyz(tmp_path / "totals.extxyz", [0.01] * 6, energy_per_atom=-8.0)  # -64 eV
    out = tmp_path / "c"
    labels = '{"energy_per_atom": true}'
    code, _, err = _run(
        capsys, "convert", str(source), "-o", str(out), "--workers", "1", "--labels", labels
    )
    assert code == 1
    line = _error_line(err, "fastchgnet data convert")
    assert "energy of 6 of 6 frames beyond the plausibility limit of 50 eV/atom (largest 64 " \
           "eV/atom), read from 'energy' as per atom in eV" in line  # fmt: skip
    assert """check --labels '{"energy_per_atom": ...}' and the energy's unit""" in line


def test_training_on_a_file_with_a_wrong_stress_unit_stops_in_one_line(tmp_path, capsys):
    from fastchgnet.cli.train import main as train_main
    from tests.train.helpers import tiny_settings

    source = _extxyz(tmp_path / "gpa.extxyz", GPA)
    out = tmp_path / "run"
    settings = tiny_settings(source, out)
    capsys.readouterr()
    assert train_main([part for s in settings for part in ("--set", s)]) == 1
    line = _error_line(capsys.readouterr().err, "fastchgnet train")
    assert f"data.source={source.resolve()}: stress of 6 of 12 frames beyond" in line
    assert line.endswith("check data.labels.stress_unit (eV/A^3, GPa or kBar)")
    assert not (out / "cache").exists()
    assert not (out / "model.pt").exists()


def test_vasp_steps_beyond_the_limits_are_skipped_not_refused(tmp_path, monkeypatch):
    """A VASP run's units are vasprun.xml's, not a setting: its broken ionic steps are
    skipped and listed each, however many (as before)."""
    import fastchgnet.data.sources.vasp as vasp
    from fastchgnet.data.sources import read_frames
    from tests.data.test_sources import reference_run

    monkeypatch.setattr(vasp, "ionic_step_energy", lambda step: 620.0 * len(step["structure"]))
    frames = read_frames(reference_run("parse-vasp-no-magmoms"))
    summary = convert(frames, tmp_path / "c", workers=1, progress=False)
    assert summary.n_structures == 0
    assert summary.n_skipped >= 5


def test_implausible_labels_names_each_label_beyond_its_limit():
    """The structured reason conversion counts: each label beyond, with its magnitude and
    limit; the text (the energy's, first) as before; whole after pickling (to workers)."""
    frame = Frame(rock_salt(0), energy_per_atom=-80.0, stress=np.eye(3) * -1500.0)
    problem = implausible_labels(frame)
    assert problem.startswith("energy -80 eV/atom exceeds 50.0 eV/atom")
    assert problem.beyond == {"energy": (80.0, 50.0), "stress": (1500.0, 1000.0)}
    again = pickle.loads(pickle.dumps(problem))
    assert again == problem
    assert again.beyond == problem.beyond
