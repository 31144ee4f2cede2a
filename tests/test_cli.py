"""The fastchgnet command: predict end to end, and one-line errors with exit code 1."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastchgnet.cli import main
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.errors import StructureError


def test_predict_writes_the_models_predictions_as_json(tmp_path, model):
    from pymatgen.core import Structure

    paths = []
    for k, structure in enumerate(varied_structures(3, seed=2, max_atoms=12)):
        path = tmp_path / f"s{k}.cif"
        structure.to(filename=str(path))
        paths.append(str(path))
    out = tmp_path / "out.json"
    assert main(["predict", *paths, "-o", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["name"] for r in records] == ["s0.cif", "s1.cif", "s2.cif"]
    expected = model.predict_structure([Structure.from_file(p) for p in paths])
    for record, p in zip(records, expected, strict=True):
        assert record["energy_per_atom_eV"] == pytest.approx(float(p["e"]), abs=1e-6)
        np.testing.assert_allclose(record["forces_eV_per_A"], p["f"], atol=1e-5)
        np.testing.assert_allclose(record["stress_GPa"], p["s"], atol=1e-4)
        np.testing.assert_allclose(record["magmoms_muB"], p["m"], atol=1e-5)


def test_predict_in_bf16_follows_the_bf16_model(tmp_path, model):
    from pymatgen.core import Structure

    path = tmp_path / "s.cif"
    next(iter(varied_structures(1, seed=3, max_atoms=12))).to(filename=str(path))
    out = tmp_path / "out.json"
    assert main(["predict", str(path), "-o", str(out), "--precision", "bf16"]) == 0
    record = json.loads(out.read_text())[0]
    structure = Structure.from_file(path)
    full = model.predict_structure(structure)
    try:  # the session's model: back to float32 whatever happens
        mixed = model.set_precision("bf16").predict_structure(structure)
    finally:
        model.set_precision("float32")
    assert record["energy_per_atom_eV"] == pytest.approx(float(mixed["e"]), abs=1e-6)
    assert record["energy_per_atom_eV"] != pytest.approx(float(full["e"]), abs=1e-6)
    np.testing.assert_allclose(record["forces_eV_per_A"], mixed["f"], atol=1e-5)


def test_predict_missing_file_is_a_one_line_error(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope.cif")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "nope.cif: no such file" in err


def test_predict_unreadable_file_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.cif"
    bad.write_text("this is not a crystal\n")
    assert main(["predict", str(bad)]) == 1
    assert "bad.cif: cannot read a structure" in capsys.readouterr().err


def test_predict_element_out_of_range_names_it(tmp_path, capsys):
    pytest.importorskip("chgnet")
    from pymatgen.core import Lattice, Structure

    path = tmp_path / "am.cif"
    Structure(Lattice.cubic(3.0), ["Am"], [[0, 0, 0]]).to(filename=str(path))
    assert main(["predict", str(path)]) == 1
    assert "Am (Z=95) beyond the model's 94 (H to Pu)" in capsys.readouterr().err


def test_unknown_subcommand_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["fly"])
    assert exit_info.value.code == 2


# ------------------------------------------------------------------ relax and md (issue 7)
def write_cifs(tmp_path, count: int, max_atoms: int = 6) -> list[str]:
    """``count`` small varied crystals (2 atoms or more) as CIF files."""
    crystals = [s for s in varied_structures(4 * count, seed=3, max_atoms=max_atoms) if len(s) > 1]
    paths = []
    for k, structure in enumerate(crystals[:count]):
        path = tmp_path / f"r{k}.cif"
        structure.to(filename=str(path))
        paths.append(str(path))
    return paths


@pytest.mark.usefixtures("one_thread")
def test_relax_writes_one_relaxed_frame_per_structure(tmp_path, capsys, model):
    from ase.io import read

    out, traj = tmp_path / "relaxed.extxyz", tmp_path / "steps.extxyz"
    paths = write_cifs(tmp_path, 2)
    argv = ["relax", *paths, "-o", str(out), "--steps", "5", "--trajectory", str(traj)]
    assert main(argv) == 1  # written, but not converged in 5 steps
    printed = capsys.readouterr()
    assert printed.err.strip().splitlines()[-1] == (
        "2 of 2 structures did not converge within --steps 5"
    )
    assert printed.out.count("NOT converged") == 2
    frames = read(out, index=":")
    assert [f.info["name"] for f in frames] == ["r0.cif", "r1.cif"]
    for frame in frames:  # the written energy and forces are the model's, at the written geometry
        expected = model.predict_structure(frame)
        assert frame.get_potential_energy() / len(frame) == pytest.approx(expected["e"], abs=1e-5)
        np.testing.assert_allclose(frame.get_forces(), expected["f"], atol=1e-4)
    assert len(read(traj, index=":")) >= 2


@pytest.mark.usefixtures("one_thread")
def test_relax_fixed_cell_with_bfgs_one_by_one(tmp_path):
    pytest.importorskip("chgnet")
    from ase.io import read
    from pymatgen.core import Structure

    out = tmp_path / "relaxed.extxyz"
    (path,) = write_cifs(tmp_path, 1)
    argv = ["relax", path, "-o", str(out), "--steps", "3", "--fixed-cell"]
    assert main([*argv, "--optimizer", "BFGS", "--one-by-one", "--quiet"]) == 1  # 3 steps
    lattice = Structure.from_file(path).lattice.matrix
    assert abs(read(out).cell.array - lattice).max() < 1e-6


@pytest.mark.usefixtures("one_thread")
def test_md_writes_frames_every_log_interval_and_a_log(tmp_path):
    pytest.importorskip("chgnet")
    from ase.io import read

    (path,) = write_cifs(tmp_path, 1)
    out, log = tmp_path / "md.extxyz", tmp_path / "md.log"
    argv = ["md", path, "-o", str(out), "--steps", "4", "--loginterval", "2", "--log", str(log)]
    assert main([*argv, "--thermostat", "langevin", "--seed", "0", "--quiet"]) == 0
    assert len(read(out, index=":")) == 3
    assert log.read_text().count("\n") == 4


@pytest.mark.usefixtures("one_thread")
def test_md_npt_from_extxyz_input(tmp_path):
    pytest.importorskip("chgnet")
    from ase.io import read, write

    (path,) = write_cifs(tmp_path, 1)
    source = tmp_path / "in.extxyz"
    write(source, read(path))
    out = tmp_path / "npt.traj"
    argv = ["md", str(source), "-o", str(out), "--ensemble", "npt", "--thermostat", "berendsen"]
    assert main([*argv, "--steps", "2", "--loginterval", "1", "--quiet"]) == 0
    assert len(read(out, index=":")) == 3


@pytest.mark.parametrize("command", ["relax", "md"])
def test_missing_file_is_a_one_line_error(tmp_path, capsys, command):
    assert main([command, str(tmp_path / "nope.cif"), "-o", str(tmp_path / "out.extxyz")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "nope.cif: no such file" in err


@pytest.mark.parametrize("command", ["relax", "md"])
def test_unreadable_cif_is_a_one_line_error(tmp_path, capsys, command):
    bad = tmp_path / "bad.cif"
    bad.write_text("data_nothing\n_cell_length_a oops\n")
    assert main([command, str(bad), "-o", str(tmp_path / "out.extxyz")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "bad.cif: cannot read a structure" in err


@pytest.mark.parametrize("command", ["relax", "md"])
def test_element_beyond_pu_is_a_one_line_error(tmp_path, capsys, command):
    pytest.importorskip("chgnet")
    from pymatgen.core import Lattice, Structure

    path = tmp_path / "am.cif"
    Structure(Lattice.cubic(3.0), ["Am"], [[0, 0, 0]]).to(filename=str(path))
    assert main([command, str(path), "-o", str(tmp_path / "out.extxyz"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "Am (Z=95) beyond the model's 94 (H to Pu)" in err


@pytest.mark.parametrize(
    ("command", "options", "says"),
    [
        ("relax", ["-o", "relaxed"], "-o {}relaxed: ASE cannot tell a file format"),
        ("relax", ["-o", "out.pdf"], "-o {}out.pdf: ASE cannot write pdf files"),
        ("relax", ["-o", "POSCAR"], "-o {}POSCAR: a vasp file holds one structure"),
        ("relax", ["--trajectory", "steps"], "--trajectory {}steps: ASE cannot tell"),
        ("md", ["-o", "md.vasp"], "-o {}md.vasp: a vasp file holds one structure"),
        ("md", ["-o", "md"], "-o {}md: ASE cannot tell a file format"),
    ],
)
def test_an_output_ase_cannot_write_is_a_one_line_error_before_the_run(
    tmp_path, capsys, monkeypatch, command, options, says
):
    """``fastchgnet relax a.cif b.cif -o relaxed`` relaxed both and then failed with a traceback
    in ASE's writer, the work lost; now the name is judged before anything runs."""
    import importlib

    def never(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(importlib.import_module("fastchgnet.md.relax"), "relax", never)
    monkeypatch.setattr(importlib.import_module("fastchgnet.md.dynamics"), "run_md", never)
    paths = write_cifs(tmp_path, 2 if command == "relax" else 1)
    options = [str(tmp_path / o) if k % 2 else o for k, o in enumerate(options)]
    if "-o" not in options:
        options += ["-o", str(tmp_path / "relaxed.extxyz")]
    assert main([command, *paths, *options]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert says.format(f"{tmp_path}/") in err


@pytest.mark.parametrize(
    ("command", "output", "says"),
    [
        ("relax", "folder", "is a folder; name a file in it, such as out.extxyz"),
        ("relax", "missing/out.extxyz", "the folder {}missing does not exist"),
        ("md", "md.gif", "ASE cannot add frames to a gif file one by one"),
    ],
)
def test_an_output_that_is_a_folder_or_cannot_grow_is_refused_before_the_run(
    tmp_path, capsys, monkeypatch, command, output, says
):
    import importlib

    def never(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(importlib.import_module("fastchgnet.md.relax"), "relax", never)
    monkeypatch.setattr(importlib.import_module("fastchgnet.md.dynamics"), "run_md", never)
    (tmp_path / "folder").mkdir()
    paths = write_cifs(tmp_path, 1)
    assert main([command, *paths, "-o", str(tmp_path / output)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert says.format(f"{tmp_path}/") in err


def test_md_thermostat_that_does_not_fit_the_ensemble_says_which_do(tmp_path, capsys):
    (path,) = write_cifs(tmp_path, 1)
    argv = ["md", path, "-o", str(tmp_path / "md.extxyz"), "--ensemble", "npt"]
    assert main([*argv, "--thermostat", "langevin"]) == 1
    assert "use one of nose-hoover, berendsen" in capsys.readouterr().err


def test_md_unknown_ensemble_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["md", "x.cif", "--ensemble", "nph"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("command", ["predict", "relax", "md"])
@pytest.mark.parametrize(
    ("device", "says"),
    [("cuda:64", "--device 'cuda:64': "), ("gpu0", "--device 'gpu0': not a torch device")],
)
def test_device_that_is_not_there_is_a_one_line_error(tmp_path, capsys, command, device, says):
    (path,) = write_cifs(tmp_path, 1)
    argv = [command, path, "-o", str(tmp_path / "out.extxyz"), "--device", device]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert says in err


def test_device_auto_is_the_gpu_when_cuda_sees_one(monkeypatch):
    import torch

    from fastchgnet.model.device import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert check_device("auto") == torch.device("cuda")


def test_load_model_puts_the_model_on_the_named_device(monkeypatch):
    import torch

    from fastchgnet.cli import inputs

    moved = []
    monkeypatch.setattr(inputs, "check_device", lambda spec, what, kinds: torch.device("meta"))
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, where: moved.append(where) or self)
    model = inputs.load_model("0.3.0", "float32", "somewhere")
    assert moved == [torch.device("meta")]
    assert model.precision == "float32"


def test_a_numbered_gpu_becomes_the_current_device(monkeypatch):
    import torch

    from fastchgnet.cli import inputs

    current = []
    monkeypatch.setattr(inputs, "check_device", lambda spec, what, kinds: torch.device(spec))
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, where: self)
    inputs.load_model("0.3.0", "float32", "cuda:1")
    assert current == [torch.device("cuda:1")]
    inputs.load_model("0.3.0", "float32", "cuda")  # the current one already
    assert current == [torch.device("cuda:1")]


def test_a_gzipped_extxyz_input_is_read_whole_without_seeking_in_the_stream(tmp_path, monkeypatch):
    """``fastchgnet predict|relax|md x.extxyz.gz``: every structure, as from the plain file,
    read from a decompressed copy (seeking in a gzip stream restarts it: quadratic)."""
    import gzip

    from ase.io import write

    from fastchgnet.cli.inputs import read_structures
    from fastchgnet.data.random_crystals import varied_structures
    from fastchgnet.md.calculator import as_atoms

    plain = tmp_path / "in.extxyz"
    write(plain, [as_atoms(s) for s in varied_structures(3, seed=2, max_atoms=6)])
    packed = tmp_path / "in.extxyz.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    seeks = []
    seek = gzip.GzipFile.seek
    monkeypatch.setattr(gzip.GzipFile, "seek", lambda f, *a: seeks.append(a) or seek(f, *a))
    unpacked, expected = read_structures([str(packed)]), read_structures([str(plain)])
    assert seeks == []
    assert len(unpacked) == len(expected) == 3
    for a, b in zip(unpacked, expected, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
    assert unpacked[2].info["name"] == "in.extxyz.gz[2]"


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("command", "extra", "logged"),
    [
        ("relax", ["--steps", "1", "--fmax", "100"], None),
        ("md", ["--steps", "2", "--seed", "0"], "--log"),
    ],
)
def test_a_second_run_into_the_same_output_is_refused_unless_overwrite(
    tmp_path, capsys, command, extra, logged
):
    """``fastchgnet relax|md`` run twice replaced the first run's results without a word."""
    pytest.importorskip("chgnet")
    paths = write_cifs(tmp_path, 1)
    out, log = tmp_path / f"{command}.extxyz", tmp_path / "md.log"
    argv = [command, *paths, "-o", str(out), *extra, "--quiet"]
    argv += [logged, str(log)] if logged else []
    assert main(argv) == 0
    first = out.read_bytes()
    logs = log.read_text() if logged else None
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"-o {out}: exists already" in err
    assert "pass --overwrite to replace it, or choose another -o" in err
    assert out.read_bytes() == first
    assert main([*argv, "--overwrite"]) == 0
    if logged:  # replaced, not appended to
        assert log.read_text().count("\n") == logs.count("\n")


@pytest.mark.parametrize(("command", "option"), [("relax", "--trajectory"), ("md", "--log")])
def test_an_existing_trajectory_or_log_is_refused_before_the_run(
    tmp_path, capsys, monkeypatch, command, option
):
    import importlib

    def never(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(importlib.import_module("fastchgnet.cli.inputs"), "load_model", never)
    paths = write_cifs(tmp_path, 1)
    earlier = tmp_path / "earlier.extxyz"
    earlier.write_text("an earlier run\n")
    argv = [command, *paths, "-o", str(tmp_path / "new.extxyz"), option, str(earlier)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"{option} {earlier}: exists already" in err
    assert f"or choose another {option}" in err
    assert earlier.read_text() == "an earlier run\n"


@pytest.mark.usefixtures("one_thread")
def test_relax_searches_each_structures_neighbours_once_screen_included(
    tmp_path, monkeypatch, model
):
    """The screen built every crystal graph, then each relaxation's calculator searched the
    same structure again; now the calculators start from the screen's neighbour lists."""
    import importlib

    from fastchgnet.data import graph

    searched = []

    def counting(structure, *args, **kwargs):
        searched.append(kwargs.get("name"))
        return graph.build_graph(structure, *args, **kwargs)

    for module in ("fastchgnet.md.verlet_graph", "fastchgnet.model.potential"):
        monkeypatch.setattr(importlib.import_module(module), "build_graph", counting)
    paths = write_cifs(tmp_path, 2)
    out = tmp_path / "relaxed.extxyz"
    argv = ["relax", *paths, "-o", str(out), "--steps", "2", "--compile", "off", "--quiet"]
    assert main(argv) == 1  # not converged in 2 steps
    assert len(searched) == 2
    assert len(set(searched)) == 2


def test_relax_names_and_skips_a_disordered_structure(tmp_path, capsys, model):
    from pymatgen.core import Lattice, Structure

    from fastchgnet.md.calculator import first_neighbours

    mixed = Structure(Lattice.cubic(4.2), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0] * 3, [0.5] * 3])
    with pytest.raises(StructureError, match=r"structure 1 x \(NaKCl\): is disordered"):
        first_neighbours(model.config, mixed, "structure 1 x (NaKCl)")
    (good,) = write_cifs(tmp_path, 1)
    disordered = tmp_path / "mixed.cif"
    mixed.to(filename=str(disordered))
    out = tmp_path / "relaxed.extxyz"
    argv = ["relax", good, str(disordered), "-o", str(out), "--steps", "1", "--compile", "off"]
    assert main([*argv, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "skipped structure 1 mixed.cif" in err
    assert "is disordered (partial occupancies)" in err


def test_relax_help_says_what_the_cell_force_of_fmax_is(capsys):
    """--fmax bounds ASE's Frechet cell force, a virial per atom in eV/Å, not a stress."""
    with pytest.raises(SystemExit):
        main(["relax", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert "stress x volume / N atoms, in eV/Å" in text
    assert "fmax x N / V" in text
