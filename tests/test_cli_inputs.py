"""What the commands read: every block of a CIF, a CIF pymatgen refuses and a POSCAR without
element names as one-line errors, and overlapping atoms refused before the model runs."""

from __future__ import annotations

import importlib
import json
import re

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from fastchgnet.cli import main
from fastchgnet.cli.inputs import read_structures, structure_label
from fastchgnet.data.graph import MIN_PAIR_DISTANCE, build_graph
from fastchgnet.errors import StructureError

ROCKSALT = Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
COPPER = Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_every_block_of_a_cif_is_read_and_named(tmp_path):
    path = tmp_path / "two.cif"
    path.write_text(ROCKSALT.to(fmt="cif") + "\n" + COPPER.to(fmt="cif"))
    structures = read_structures([str(path)])
    assert [len(s) for s in structures] == [2, 1]
    assert [s.properties["label"] for s in structures] == ["two.cif[0]", "two.cif[1]"]


def test_predict_writes_a_record_for_each_block_of_a_cif(tmp_path, model):
    path, out = tmp_path / "two.cif", tmp_path / "out.json"
    path.write_text(ROCKSALT.to(fmt="cif") + "\n" + COPPER.to(fmt="cif"))
    assert main(["predict", str(path), "-o", str(out)]) == 0
    assert [r["name"] for r in json.loads(out.read_text())] == ["two.cif[0]", "two.cif[1]"]


def test_a_cif_pymatgen_refuses_is_an_error_with_its_reason_not_another_readers_guess(
    tmp_path, capsys
):
    path = tmp_path / "twice.cif"  # one site of occupancy 2: ASE would merge it silently
    text = COPPER.to(fmt="cif").replace(" 1\n", " 2\n")
    assert "Cu  Cu0  1  0.00000000  0.00000000  0.00000000  2" in text
    path.write_text(text)
    assert main(["predict", str(path)]) == 1
    err = one_line_error(capsys)
    assert "twice.cif: cannot read a structure" in err
    assert "Occupancy 2" in err


def test_a_poscar_without_element_names_is_refused_not_read_as_hydrogen(tmp_path, capsys):
    path = tmp_path / "POSCAR"
    lines = ROCKSALT.to(fmt="poscar").splitlines()
    assert lines[5].split() == ["Na", "Cl"]
    # VASP 4: no element line; neither the comment nor the coordinate lines name any
    coordinates = [" ".join(line.split()[:3]) for line in lines[8:]]
    path.write_text("\n".join(["a rocksalt test", *lines[1:5], *lines[6:8], *coordinates]))
    assert main(["predict", str(path)]) == 1
    assert "POSCAR: the POSCAR names no elements" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("second", "says"),
    [
        ([0.0, 0.0, 0.0], "atoms 0 and 1 are 0.000 Å apart"),
        ([0.01, 0.0, 0.0], "atoms 0 and 1 are 0.036 Å apart"),
        ([1.0, 0.0, 0.0], "atoms 0 and 1 are 0.000 Å apart"),  # on the first one's image
    ],
)
def test_overlapping_atoms_are_an_error_naming_the_pair(second, says):
    structure = Structure(
        Lattice.cubic(3.6), ["Cu", "Cu"], [[0, 0, 0], second], validate_proximity=False
    )
    structure.properties["material_id"] = "mp-twice"
    with pytest.raises(StructureError, match=rf"mp-twice.*{re.escape(says)}.*overlapping atoms"):
        build_graph(structure)


def test_an_atom_on_its_own_periodic_image_is_an_error():
    thin = Structure(Lattice.tetragonal(0.05, 3.0), ["Cu"], [[0, 0, 0]])
    with pytest.raises(StructureError, match=r"atom 0 and its periodic image are 0\.050 Å"):
        build_graph(thin)


def test_atoms_just_beyond_the_overlap_distance_are_kept():
    apart = MIN_PAIR_DISTANCE * 1.01 / 3.6
    structure = Structure(
        Lattice.cubic(3.6), ["H", "H"], [[0, 0, 0], [apart, 0, 0]], validate_proximity=False
    )
    graph = build_graph(structure)
    assert np.isclose(
        np.linalg.norm(np.diff(structure.cart_coords, axis=0)), MIN_PAIR_DISTANCE * 1.01
    )
    assert graph.bond_atoms.shape[0] > 0


def test_predict_on_overlapping_atoms_is_a_one_line_error_not_nan(tmp_path, capsys):
    path = tmp_path / "twice.extxyz"
    path.write_text(
        '2\nLattice="3.0 0.0 0.0 0.0 3.0 0.0 0.0 0.0 3.0" Properties=species:S:1:pos:R:3 '
        'pbc="T T T"\nCu 0 0 0\nCu 0 0 0\n'
    )
    assert main(["predict", str(path)]) == 1
    assert "overlapping atoms" in one_line_error(capsys)


def write_structure(path, structure=ROCKSALT) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    structure.to(filename=str(path))
    return str(path)


def test_files_of_the_same_name_in_other_folders_keep_their_folders(tmp_path):
    first = write_structure(tmp_path / "runA" / "POSCAR")
    second = write_structure(tmp_path / "runB" / "POSCAR", COPPER)
    labels = [s.properties["label"] for s in read_structures([first, second])]
    assert labels == [first, second]


def overlapping(tmp_path) -> str:
    path = tmp_path / "twice.extxyz"
    path.write_text(
        '2\nLattice="3.0 0.0 0.0 0.0 3.0 0.0 0.0 0.0 3.0" Properties=species:S:1:pos:R:3 '
        'pbc="T T T"\nCu 0 0 0\nCu 0 0 0\n'
    )
    return str(path)


def test_predict_writes_the_structures_it_can_and_names_each_it_skips(tmp_path, capsys, model):
    good, out = write_structure(tmp_path / "good.cif"), tmp_path / "out.json"
    assert main(["predict", good, overlapping(tmp_path), "-o", str(out)]) == 1
    assert [r["name"] for r in json.loads(out.read_text())] == ["good.cif"]
    err = capsys.readouterr().err
    assert "skipped structure 1 twice.extxyz[0]" in err
    assert "overlapping atoms" in err


def test_relax_writes_the_structures_it_can_and_names_each_it_skips(tmp_path, capsys, model):
    from ase.io import read

    good, out = write_structure(tmp_path / "good.cif"), tmp_path / "out.extxyz"
    argv = ["relax", good, overlapping(tmp_path), "-o", str(out), "--steps", "2", "--quiet"]
    assert main([*argv, "--compile", "off"]) == 1
    assert [frame.info["name"] for frame in read(out, index=":")] == ["good.cif"]
    assert "skipped structure 1 twice.extxyz[0]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--fmax", "nan", "--fmax must be > 0 eV/Å, got nan"),
        ("--fmax", "-1", "--fmax must be > 0 eV/Å, got -1.0"),
        ("--steps", "-5", "--steps must be >= 0, got -5"),
        ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
        ("--trajectory", "{out}", "is the -o file too"),
    ],
)
def test_relax_settings_that_cannot_work_are_refused_before_the_run(
    tmp_path, capsys, option, value, says
):
    out = tmp_path / "out.extxyz"
    argv = ["relax", write_structure(tmp_path / "good.cif"), "-o", str(out)]
    assert main([*argv, option, value.format(out=out)]) == 1
    assert says in one_line_error(capsys)


@pytest.mark.parametrize(("option", "name"), [("-o", "out.json"), ("--trajectory", "t.cif")])
def test_relax_refuses_a_format_that_drops_the_frames_names_and_results(
    tmp_path, capsys, option, name
):
    """ASE's json (a database) and cif took the frames of several structures without their
    names, convergence, steps and energies; one structure may still go to a CIF."""
    good = write_structure(tmp_path / "good.cif")
    other = write_structure(tmp_path / "cu.cif", COPPER)
    out = tmp_path / ("out.extxyz" if option != "-o" else name)
    argv = ["relax", good, other, "-o", str(out), "--compile", "off", "--quiet"]
    if option != "-o":
        argv += [option, str(tmp_path / name)]
    assert main(argv) == 1
    assert "would drop each frame's name, convergence, steps and results" in one_line_error(capsys)
    single = tmp_path / "relaxed.cif"
    argv = ["relax", good, "-o", str(single), "--steps", "1", "--compile", "off", "--quiet"]
    assert main(argv) in (0, 1)  # converged or not within one step: written either way
    assert single.is_file()


def test_relax_says_its_compile_decision_under_quiet_too(tmp_path, capsys):
    """--quiet hid the decision with the progress bar (md keeps its notices under --quiet)."""
    strained = ROCKSALT.copy()
    strained.apply_strain(0.05)
    good = write_structure(tmp_path / "strained.cif", strained)
    argv = ["relax", good, "-o", str(tmp_path / "r.extxyz"), "--steps", "2", "--quiet"]
    main(argv)
    assert "for this relaxation" in capsys.readouterr().err


def test_relax_that_compiles_says_so_on_stderr(tmp_path, capsys, monkeypatch):
    """A relaxation with --compile sat silent through its compile (the compile log went to
    the fastchgnet.compile logger only)."""
    import logging

    def compiling(*args, **kwargs):  # what a compile logs, without its minute
        logging.getLogger("fastchgnet.compile").info("graph 1 (inductor): compiled in 61.0 s")
        return real(*args, **kwargs)

    import importlib

    relax_module = importlib.import_module("fastchgnet.md.relax")  # the package has relax()
    real = relax_module.relax
    monkeypatch.setattr(relax_module, "relax", compiling)
    good = write_structure(tmp_path / "good.cif")
    argv = ["relax", good, "-o", str(tmp_path / "r.extxyz"), "--steps", "1", "--quiet"]
    main([*argv, "--compile", "torchscript"])
    assert "graph 1 (inductor): compiled in 61.0 s" in capsys.readouterr().err


def test_predict_output_in_a_folder_that_cannot_take_it_is_refused_before_the_run(
    tmp_path, capsys, monkeypatch
):
    cli_main = importlib.import_module("fastchgnet.cli.commands")  # the package exports main()
    monkeypatch.setattr(cli_main, "load_model", lambda *a: pytest.fail("the model ran"))
    good = write_structure(tmp_path / "good.cif")
    assert main(["predict", good, "-o", str(tmp_path)]) == 1
    assert "is a folder" in one_line_error(capsys)
    assert main(["predict", good, "-o", str(tmp_path / "nope" / "out.json")]) == 1
    assert "does not exist" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--log", "{tmp}"], "--log {tmp}: is a folder"),
        (["--log", "{tmp}/nope/md.log"], "does not exist"),
        (["--log", "{tmp}/md.extxyz"], "is the -o trajectory too"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--temperature", "0"], "needs temperature > 0 K"),
        (["--temperature", "0", "--thermostat", "berendsen"], "needs temperature > 0 K"),
        (["--ensemble", "npt", "--temperature", "0", "--thermostat", "berendsen"], "> 0 K"),
    ],
)
def test_md_settings_that_cannot_work_are_refused_before_the_run(
    tmp_path, capsys, monkeypatch, extra, says
):
    inputs = importlib.import_module("fastchgnet.cli.inputs")
    monkeypatch.setattr(inputs, "load_model", lambda *a: pytest.fail("the model ran"))
    structure = write_structure(tmp_path / "good.cif")
    argv = ["md", structure, "-o", str(tmp_path / "md.extxyz"), "--steps", "2"]
    assert main([*argv, *(arg.format(tmp=tmp_path) for arg in extra)]) == 1
    assert says.format(tmp=tmp_path) in one_line_error(capsys)


def test_langevin_quenches_at_zero_kelvin(tmp_path, model):
    out = tmp_path / "md.extxyz"
    argv = ["md", write_structure(tmp_path / "good.cif"), "-o", str(out), "--steps", "2"]
    assert main([*argv, "--temperature", "0", "--thermostat", "langevin", "--quiet"]) == 0


def test_npt_nose_hoover_with_fixed_atoms_is_refused_before_the_run(tmp_path, capsys, model):
    from pymatgen.io.vasp import Poscar

    path = tmp_path / "POSCAR"
    Poscar(ROCKSALT, selective_dynamics=[[False] * 3, [True] * 3]).write_file(path)
    argv = ["md", str(path), "-o", str(tmp_path / "md.extxyz"), "--steps", "2"]
    assert main([*argv, "--ensemble", "npt", "--thermostat", "nose-hoover"]) == 1
    assert "cannot keep atoms fixed" in one_line_error(capsys)


def test_a_folder_named_as_a_structure_is_called_a_folder(tmp_path, capsys):
    assert main(["predict", str(tmp_path)]) == 1
    assert "is a folder; name the structure files in it" in one_line_error(capsys)


def test_an_unknown_element_is_named_by_its_symbol_and_site_label(tmp_path, capsys):
    for species, label, symbol in (("X", None, "X"), ("Xx3+", "Mn2", "Xx")):  # Xx: a typo
        ROCKSALT.copy().replace(0, species, label=label).to(filename=str(tmp_path / "x.cif"))
        assert main(["predict", str(tmp_path / "x.cif")]) == 1  # X: not pymatgen's hash
        says = f"x.cif (XCl): unknown element '{symbol}' at site 0 (label {label or 'X0'})"
        assert says in one_line_error(capsys)


def test_a_run_folder_as_model_loads_its_model_file(tmp_path, model):
    from fastchgnet.cli.inputs import load_model

    model.save(tmp_path / "model.pt")
    loaded = load_model(str(tmp_path))
    for ours, theirs in zip(loaded.parameters(), model.parameters(), strict=True):
        assert torch.equal(ours, theirs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"a folder without model\.pt"):
        load_model(str(tmp_path / "empty"))


def test_a_file_that_is_no_model_is_one_line_without_torchs_unsafe_advice(tmp_path, capsys):
    good = write_structure(tmp_path / "good.cif")
    assert main(["predict", good, "--model", good]) == 1
    err = one_line_error(capsys)
    assert "good.cif: not a model file: not a torch file (it is text, beginning " in err
    assert "weights_only" not in err


def test_md_nve_with_a_thermostat_is_refused_and_help_shows_defaults(tmp_path, capsys):
    structure = write_structure(tmp_path / "good.cif")
    argv = ["md", structure, "-o", str(tmp_path / "md.extxyz"), "--ensemble", "nve"]
    assert main([*argv, "--thermostat", "langevin"]) == 1
    assert "--thermostat langevin: nve runs without a thermostat" in one_line_error(capsys)
    for command, shown in [("md", "MD steps (default: 1000)"), ("relax", "(default: 0.1)")]:
        with pytest.raises(SystemExit):
            main([command, "-h"])
        assert shown in " ".join(capsys.readouterr().out.split())


def test_predict_compile_is_on_off_or_the_devices_default():
    from fastchgnet.cli import build_parser

    parse = build_parser().parse_args
    assert [parse(["predict", "a.cif", *flag]).compile for flag in ([], ["--compile"])] == [
        None,
        True,
    ]
    assert parse(["predict", "a.cif", "--no-compile"]).compile is False


def test_predict_refuses_an_existing_output_unless_overwrite(tmp_path, capsys):
    """predict -o, as relax and md, does not replace an earlier run's results silently."""
    from ase.build import bulk
    from ase.io import write

    write(tmp_path / "si.extxyz", bulk("Si", "diamond", a=5.43))
    out = tmp_path / "p.json"
    out.write_text("earlier\n")
    argv = ["predict", str(tmp_path / "si.extxyz"), "-o", str(out)]
    assert main(argv) == 1
    assert "exists already" in capsys.readouterr().err
    assert out.read_text() == "earlier\n"
    assert main([*argv, "--overwrite"]) == 0
    assert out.read_text().startswith("[")


def test_frames_of_one_file_sharing_a_label_are_told_apart_by_index(tmp_path):
    """A trajectory's frames carry one ``label``; each is named ``label[i]``, not all alike."""
    from ase.build import bulk
    from ase.io import write

    frames = []
    for a in (5.40, 5.43, 5.46):
        atoms = bulk("Si", "diamond", a=a)
        atoms.info["label"] = "si-md"
        frames.append(atoms)
    write(tmp_path / "traj.extxyz", frames)
    names = [structure_label(s) for s in read_structures([str(tmp_path / "traj.extxyz")])]
    assert names == ["si-md[0]", "si-md[1]", "si-md[2]"]


def test_file_at_index_takes_some_of_a_files_structures(tmp_path):
    """``md traj.extxyz`` of a trajectory said 'holds 21 structures; md runs one' and
    ``traj.extxyz@-1`` 'no such file'. ASE's index syntax now selects frames."""
    from ase.build import bulk
    from ase.io import write

    write(tmp_path / "traj.extxyz", [bulk("Si", "diamond", a=a) for a in (5.40, 5.43, 5.46)])
    path = str(tmp_path / "traj.extxyz")

    def names(spec: str) -> list[str]:
        return [structure_label(s) for s in read_structures([spec])]

    assert names(f"{path}@-1") == ["traj.extxyz[2]"]
    assert names(f"{path}@0:2") == ["traj.extxyz[0]", "traj.extxyz[1]"]
    assert names(f"{path}@::2") == ["traj.extxyz[0]", "traj.extxyz[2]"]
    with pytest.raises(ValueError, match=r"index 3 is out of range \(3 structures\)"):
        read_structures([f"{path}@3"])
    with pytest.raises(ValueError, match=r"@last is not an index"):
        read_structures([f"{path}@last"])
    with pytest.raises(ValueError, match=r"traj.extxyz@::0: @::0 is not an index"):
        read_structures([f"{path}@::0"])  # said "slice step cannot be zero", naming nothing
    with pytest.raises(ValueError, match="selects none of the 3 structures"):
        read_structures([f"{path}@5:"])


def test_md_from_a_frame_with_momenta_says_it_starts_from_them(tmp_path, capsys):
    from ase.build import bulk
    from ase.io import write
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    MaxwellBoltzmannDistribution(atoms, temperature_K=450, rng=np.random.default_rng(0))
    write(tmp_path / "run.extxyz", [bulk("Si", "diamond", a=5.43) * (2, 1, 1), atoms])
    out = tmp_path / "md.extxyz"
    command = ["md", f"{tmp_path / 'run.extxyz'}@-1", "--steps", "2", "-o", str(out)]
    assert main([*command, "--compile", "off"]) == 0
    err = capsys.readouterr().err
    assert f"starting from the momenta stored in {tmp_path / 'run.extxyz'}@-1: " in err
    assert f"{atoms.get_temperature():.1f} K" in err
