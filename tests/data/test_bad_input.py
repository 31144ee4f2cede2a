"""Bad input to ``fastchgnet data convert|stats|synth``: a bad frame is skipped and listed
(skipped.json, "unusable" in stats), never fatal; a file that cannot be read at all, or a bad
option, is one line naming it, with no traceback and no half-made cache."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zlib

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from fastchgnet.cli import main
from fastchgnet.data.cache import CacheError, GraphDataset
from fastchgnet.data.convert import convert
from fastchgnet.data.sources import from_structures, read_vasp
from tests.data.frames import mptrj_record, rock_salt, write_mptrj


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["data", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str, command: str) -> str:
    """The message of a one-line ``fastchgnet data <command>: error: ...`` (after any
    progress bar's lines)."""
    lines = [line for line in err.splitlines() if line and not line.startswith("convert -> ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fastchgnet data {command}: error: "), err
    return lines[0]


def _bad_mptrj(tmp_path):
    """Two good materials and five bad records, one of each kind."""
    disordered = Structure(Lattice.cubic(3.6), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    no_structure = mptrj_record(rock_salt(1), 1)
    del no_structure["structure"]
    wrong_forces = mptrj_record(rock_salt(2), 2)
    wrong_forces["force"] = np.zeros((3, 3)).tolist()
    flat_stress = mptrj_record(rock_salt(3), 3)
    flat_stress["stress"] = [0.0, 0.0, 0.0]
    materials = {
        "mp-1": {"mp-1-0": mptrj_record(rock_salt(0), 0), "mp-1-1": no_structure},
        "mp-2": {"mp-2-0": {**mptrj_record(rock_salt(4), 4), "structure": disordered.as_dict()}},
        "mp-3": {"mp-3-0": mptrj_record(rock_salt(5, species=("Cf", "Cl")), 5)},
        "mp-4": {"mp-4-0": wrong_forces, "mp-4-1": flat_stress},
        "mp-5": {"mp-5-0": mptrj_record(rock_salt(6), 6)},
    }
    return write_mptrj(tmp_path / "mptrj.json", materials)


REASONS = {
    "mp-1-1": "the record has no 'structure'",
    "mp-2-0": "disordered structure (Fe0.5 Ni0.5, partial occupancies): a frame needs one "
    "element per site",
    "mp-3-0": "element(s) Z=[98] outside 1..94",
    "mp-4-0": "forces has shape (3, 3), expected (8, 3)",
    "mp-4-1": "stress has shape (3,), expected (3, 3)",
}


def test_bad_mptrj_records_are_skipped_with_their_ids_and_reasons(tmp_path, capsys):
    """Used to stop with KeyError: 'structure' or AttributeError ('specie' not found)."""
    source = _bad_mptrj(tmp_path)
    code, _, err = _run(capsys, "convert", str(source), "-o", str(tmp_path / "c"), "--workers", "1")
    assert code == 0, err
    assert len(GraphDataset(tmp_path / "c")) == 2
    skipped = json.loads((tmp_path / "c" / "skipped.json").read_text())
    assert {s["frame_id"]: s["reason"] for s in skipped} == REASONS
    assert {s["frame_id"]: s["material_id"] for s in skipped}["mp-2-0"] == "mp-2"


def test_stats_counts_only_the_frames_conversion_keeps_and_lists_the_rest(tmp_path, capsys):
    """Stats said "5 frames" with full coverage where convert then skipped three."""
    code, out, err = _run(capsys, "stats", str(_bad_mptrj(tmp_path)))
    assert code == 0, err
    assert out.startswith("2 frames, 16 atoms")
    assert "energy_per_atom eV/atom       2" in out
    assert "unusable (conversion skips them): 5" in out
    assert "frame mp-1-1 of mp-1: the record has no 'structure'" in out
    assert "frame mp-3-0 of mp-3 (Cl4Cf4): element(s) Z=[98] outside 1..94" in out
    for reason in REASONS.values():
        assert reason in out


def _cut_inside(source, material: str):
    """The text of the MPtrj file ``source`` up to 40 characters into ``material``'s record."""
    text = source.read_text()
    return text[: text.index(f'"{material}"') + 40]


def _gzip_cut_off(path, text: str):
    """``text`` gzipped into ``path`` as a download cut off after it: every byte of ``text``
    decompresses, then the stream ends without its end marker (gzip's EOFError)."""
    packer = zlib.compressobj(wbits=31)  # 31: a gzip header
    path.write_bytes(packer.compress(text.encode()) + packer.flush(zlib.Z_SYNC_FLUSH))
    return path


def _cut_off_mptrj(tmp_path, name: str, material: str):
    """The bad MPtrj file written as ``name`` (.json, or .json.gz cut at a flush point), cut
    off inside ``material``'s record."""
    text = _cut_inside(_bad_mptrj(tmp_path), material)
    source = tmp_path / name
    if name.endswith(".gz"):
        _gzip_cut_off(source, text)
    else:
        source.write_text(text)
    return source


BREAK = "file is not complete JSON after material mp-4 (6 frames read): "


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("mptrj.json", "parse error: premature EOF"),
        ("mptrj.json.gz", "Compressed file ended before the end-of-stream marker was reached"),
    ],
    ids=["json", "json.gz"],
)
def test_truncated_mptrj_keeps_complete_materials_and_reports_the_break(
    tmp_path, capsys, name, reason
):
    """Used to stop in one line ("not complete JSON, it breaks after material mp-4"), losing
    the complete materials before the break; from a .json.gz, ijson's 64 KiB read lost them
    too (gzip's read raises EOFError and drops what it had decompressed)."""
    source = _cut_off_mptrj(tmp_path, name, "mp-5")  # breaks off inside mp-5
    out = tmp_path / "c"
    problem = f"{BREAK}{reason}; nothing after it was read"
    with pytest.warns(UserWarning, match=re.escape(f"{source}: {problem}")):
        code, printed, err = _run(
            capsys, "convert", str(source), "-o", str(out), "--workers", "1", "--shard-size", "2"
        )
    assert code == 0, err
    assert len(GraphDataset(out)) == 1  # mp-1-0; the rest of mp-1 to mp-4 are bad records
    assert "skipped 6 frame(s)" in printed
    skipped = json.loads((out / "skipped.json").read_text())
    assert {s["frame_id"]: s["reason"] for s in skipped} == {**REASONS, "": problem}
    assert skipped[-1]["material_id"] == name
    with pytest.warns(UserWarning, match=re.escape(problem)):
        code, report, err = _run(capsys, "stats", str(source))
    assert code == 0, err
    assert f"  {name}: {problem}" in report
    assert "unusable (conversion skips them): 6" in report


def test_convert_names_the_first_skipped_frames_and_prints_its_warnings_in_one_line(tmp_path):
    """The summary used to give only a count ("skipped 6 frame(s), listed with reasons in
    skipped.json"), and the break's warning came with Python's file, line and source line."""
    source = tmp_path / "mptrj.json"
    source.write_text(_cut_inside(_bad_mptrj(tmp_path), "mp-5"))
    out = tmp_path / "c"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastchgnet",
            "data",
            "convert",
            str(source),
            "-o",
            str(out),
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    shown = [line for line in run.stdout.splitlines() if line.startswith("  skipped ")]
    firsts = [("mp-1", "mp-1-1"), ("mp-2", "mp-2-0"), ("mp-3", "mp-3-0")]
    assert shown == [f"  skipped {m}/{f}: {REASONS[f]}" for m, f in firsts]
    assert f"  and 3 more in {out / 'skipped.json'}" in run.stdout
    warning = f"fastchgnet data convert: warning: {source}: {BREAK}"
    assert any(line.startswith(warning) for line in run.stderr.splitlines()), run.stderr
    assert "UserWarning" not in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("command", ["convert", "stats"])
@pytest.mark.parametrize("name", ["mptrj.json", "mptrj.json.gz"])
def test_truncated_mptrj_without_a_complete_material_is_refused(tmp_path, capsys, command, name):
    """No complete material before the break: no dataset, one line naming the file (was "it
    breaks in material 1", for a file that is no JSON at all too)."""
    source = _cut_off_mptrj(tmp_path, name, "mp-1")
    out = tmp_path / "c"
    extra = ["-o", str(out), "--workers", "1"] if command == "convert" else []
    code, _, err = _run(capsys, command, str(source), *extra)
    assert code == 1
    message = _one_line_error(err, command)
    assert f"{source}: not complete JSON, it breaks before its first complete material: " in message
    assert message.endswith("; no frame read")
    assert not out.exists()


def test_a_source_that_fails_mid_conversion_leaves_no_trusted_cache(tmp_path):
    """What the truncated MPtrj test checked before the reader kept the frames before a
    break: a source that raises after some frames (one shard done, the next half built)
    leaves no manifest.json and no .tmp shard."""

    def frames():
        yield from from_structures([rock_salt(k) for k in range(3)], energies=[-5.0] * 3)
        raise ValueError("source.json: it breaks here")

    out = tmp_path / "c"
    with pytest.raises(ValueError, match="it breaks here"):
        convert(frames(), out, workers=1, shard_size=2, progress=False)
    assert not (out / "manifest.json").exists()  # unfinished: nothing trusts it
    assert not list(out.glob(".tmp-*"))  # the shard being built is removed
    with pytest.raises(CacheError, match=r"no manifest\.json"):
        GraphDataset(out)


def test_mptrj_record_without_energy_is_reported_with_its_frame_id(tmp_path, capsys):
    """A record without its energy, force or stress is kept with that label masked; nothing
    used to name it (only the coverage line's count: "energy 2/3"). A null magmom is
    MPtrj's for runs without spin: not named."""
    records = [mptrj_record(rock_salt(k), k) for k in range(4)]
    del records[1]["corrected_total_energy"]
    del records[2]["stress"]
    records[3]["magmom"] = None
    materials = {"mp-1": {"mp-1-0": records[0], "mp-1-1": records[1]},
                 "mp-2": {"mp-2-0": records[2], "mp-2-1": records[3]}}  # fmt: skip
    source = write_mptrj(tmp_path / "m.json", materials)
    out = tmp_path / "c"
    named = "no 'corrected_total_energy' in 1 (mp-1/mp-1-1); no 'stress' in 1 (mp-2/mp-2-0)"
    with pytest.warns(UserWarning, match=re.escape(f"{source}: ")) as caught:
        code, printed, err = _run(capsys, "convert", str(source), "-o", str(out), "--workers", "1")
    assert code == 0, err
    (warning,) = [str(w.message) for w in caught if "masked" in str(w.message)]
    assert warning.endswith(named)
    assert "labels: energy 3/4, forces 4/4, stress 3/4, magmoms 3/4 frames" in printed
    assert json.loads((out / "skipped.json").read_text()) == []


@pytest.mark.parametrize("command", ["convert", "stats"])
@pytest.mark.parametrize("name", ["empty.json", "empty.extxyz"])
def test_an_empty_source_is_one_line_naming_it_and_makes_no_cache(tmp_path, capsys, command, name):
    """Used to be an ijson IncompleteJSONError or ASE UnknownFileTypeError traceback."""
    source = tmp_path / name
    source.write_text("")
    out = tmp_path / "c"
    extra = ["-o", str(out)] if command == "convert" else []
    code, _, err = _run(capsys, command, str(source), *extra)
    assert code == 1
    assert _one_line_error(err, command).endswith(f"{source}: empty file, no frames")
    assert not out.exists()


@pytest.mark.parametrize("name", ["nope.zip", "nope.json", "nope.extxyz"])
def test_a_missing_source_is_named_before_the_cache_folder_is_made(tmp_path, capsys, name):
    out = tmp_path / "c"
    code, _, err = _run(capsys, "convert", str(tmp_path / name), "-o", str(out))
    assert code == 1
    assert _one_line_error(err, "convert").endswith(f"{tmp_path / name}: no such file or directory")
    assert not out.exists()


def _extxyz(tmp_path, name: str, change=None):
    """Four labelled rock-salt frames; ``change(k, energy, forces)`` may alter frame k's."""
    frames = []
    for k in range(4):
        atoms = AseAtomsAdaptor.get_atoms(rock_salt(k))
        energy, forces = -3.0 * len(atoms), np.full((len(atoms), 3), 0.01 * k)
        if change is not None:
            energy, forces = change(k, energy, forces)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    write(tmp_path / name, frames)
    return tmp_path / name


def test_an_implausible_energy_is_skipped_and_listed_not_fatal(tmp_path, capsys):
    """900 eV/atom used to stop convert and stats ("error: ... exceeds 50.0 eV/atom") and
    leave a .tmp-shard folder behind."""
    source = _extxyz(tmp_path, "huge.extxyz", lambda k, e, f: (900.0 * 8 if k == 2 else e, f))
    out = tmp_path / "c"
    code, _, err = _run(capsys, "convert", str(source), "-o", str(out), "--workers", "1")
    assert code == 0, err
    assert len(GraphDataset(out)) == 3
    (skipped,) = json.loads((out / "skipped.json").read_text())
    assert skipped["frame_id"] == "huge-2"
    assert skipped["reason"].startswith("energy 900 eV/atom exceeds 50.0 eV/atom")
    assert not list(out.glob(".tmp-*"))
    code, report, err = _run(capsys, "stats", str(source))
    assert code == 0, err
    assert report.startswith("3 frames")
    assert "unusable (conversion skips them): 1" in report
    assert "frame huge-2 of huge:NaCl (Na4Cl4): energy 900 eV/atom exceeds 50.0" in report


def test_every_source_judges_an_implausible_energy_the_same(monkeypatch):
    """The VASP reader used to keep a +620 eV/atom frame the ASE reader refused."""
    import fastchgnet.data.sources.vasp as vasp
    from tests.data.test_sources import reference_run

    (frame,) = from_structures([rock_salt(0)], energies=[620.0])
    assert frame.problem.startswith("energy 620 eV/atom exceeds 50.0 eV/atom")
    (frame,) = from_structures([rock_salt(0)], energies=[-5.0])
    assert frame.problem is None
    monkeypatch.setattr(vasp, "ionic_step_energy", lambda step: 620.0 * len(step["structure"]))
    frames = list(read_vasp(reference_run("parse-vasp-no-magmoms")))
    assert frames
    assert all(f.problem.startswith("energy 620 eV/atom exceeds") for f in frames)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda k, e, f: (float("nan") if k == 1 else e, f), "energy_per_atom is nan"),
        (lambda k, e, f: (e, f * np.nan if k == 1 else f), "forces has non-finite entries"),
    ],
)
def test_stats_leaves_out_and_names_frames_with_non_finite_labels(
    tmp_path, capsys, change, problem
):
    """Used to print nan means and "outliers: 0" without naming the frame."""
    code, out, err = _run(capsys, "stats", str(_extxyz(tmp_path, "f.extxyz", change)))
    assert code == 0, err
    assert out.startswith("3 frames")
    assert "nan" not in out.replace(problem, "")
    assert f"frame f-1 of f:NaCl (Na4Cl4): {problem}" in out


def test_stats_says_in_one_line_that_a_file_has_no_labels(tmp_path, capsys):
    write(tmp_path / "bare.extxyz", [AseAtomsAdaptor.get_atoms(rock_salt(k)) for k in range(2)])
    code, out, err = _run(capsys, "stats", str(tmp_path / "bare.extxyz"))
    assert code == 0, err
    assert "no labels found (energy, forces, stress, magmoms)" in out
    assert "label " not in out  # no empty table


def test_a_frame_ase_cannot_read_is_named_with_the_file(tmp_path, capsys):
    """An info stress of length 3 used to give ASE's message without file or frame; the
    frames before and after it are kept, and it is reported as unusable."""
    source = _extxyz(tmp_path, "f.extxyz")
    lines = source.read_text().splitlines()
    second = [i for i, line in enumerate(lines) if line.startswith("Lattice=")][1]
    lines[second] = lines[second].replace("Lattice=", 'stress="0.0 0.0 0.0" Lattice=')
    source.write_text("\n".join(lines) + "\n")
    code, out, _ = _run(capsys, "stats", str(source))
    assert code == 0
    assert "unusable (conversion skips them): 1" in out
    assert f"{source}: ASE cannot read frame 1 (f-1): Got info item stress" in out
    assert out.startswith("3 frames")  # the two after it are read
    assert "the frames after it are not read" not in out
    lines = source.read_text().splitlines()
    lines[0] = "not a count"  # the first frame: nothing read, the file is refused
    source.write_text("\n".join(lines) + "\n")
    code, _, err = _run(capsys, "stats", str(source))
    assert code == 1
    assert f"{source}: ASE cannot read frame 0 (f-0)" in _one_line_error(err, "stats")


@pytest.mark.parametrize("size", ["0", "-5"])
def test_a_shard_size_below_one_is_refused_naming_the_option(tmp_path, capsys, size):
    """0 used to write an empty cache silently; -5 gave an islice message."""
    source = _extxyz(tmp_path, "f.extxyz")
    out = tmp_path / "c"
    code, _, err = _run(capsys, "convert", str(source), "-o", str(out), "--shard-size", size)
    assert code == 1
    assert f"--shard-size {size}: must be at least 1" in _one_line_error(err, "convert")
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-n", "-1", "-o", "s.extxyz"], "-n -1: must be at least 1 structure"),
        (["-n", "2", "--max-atoms", "0", "-o", "s.extxyz"], "--max-atoms 0: must be at least 1"),
        (["-n", "2", "-o", "s.xyzz"], "-o s.xyzz: synth writes extxyz"),
        (["-n", "2", "-o", "missing/s.extxyz"], "-o missing/s.extxyz: the folder missing does"),
    ],
)
def test_synth_refuses_bad_counts_and_output_names_before_labelling(
    tmp_path, capsys, monkeypatch, argv, message
):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, "synth", *argv)
    assert code == 1
    assert message in _one_line_error(err, "synth")
    assert not list(tmp_path.iterdir())


def test_a_folder_of_structures_says_what_it_holds_and_what_a_source_is(tmp_path, capsys):
    # was only "no vasprun.xml in it"
    folder = tmp_path / "cifs"
    folder.mkdir()
    for k in range(3):
        rock_salt(k).to(filename=str(folder / f"s{k}.cif"))
    code, _, err = _run(capsys, "convert", str(folder), "-o", str(tmp_path / "c"))
    assert code == 1
    line = _one_line_error(err, "convert").removeprefix("fastchgnet data convert: error: ")
    assert line.startswith(f"{folder}: no vasprun.xml in it (it holds 3 .cif); a data source is")
    assert "structures alone (CIF, POSCAR) carry no energies or forces" in line


def test_a_config_file_as_data_source_is_named_a_config(tmp_path, capsys):
    # was "ASE cannot read frame 0 (base-0): toml"
    config = tmp_path / "base.toml"
    config.write_text('[data]\nsource = "synth.extxyz"\n')
    code, _, err = _run(capsys, "convert", str(config), "-o", str(tmp_path / "c"))
    assert code == 1
    said = f"{config}: a config file, not data (a run's config is --config {config})"
    assert _one_line_error(err, "convert") == f"fastchgnet data convert: error: {said}"
