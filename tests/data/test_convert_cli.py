"""`fastchgnet data convert`: an extxyz file becomes a graph cache the dataset reads."""

from __future__ import annotations

import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from pymatgen.io.ase import AseAtomsAdaptor

from fastchgnet.cli import main
from fastchgnet.data.cache import GraphDataset
from fastchgnet.data.random_crystals import varied_structures


def test_data_convert_command_builds_a_readable_cache(tmp_path):
    frames = []
    for k, structure in enumerate(varied_structures(5, seed=9, max_atoms=12)):
        atoms = AseAtomsAdaptor.get_atoms(structure)
        n = len(atoms)
        atoms.calc = SinglePointCalculator(
            atoms, energy=-3.0 * n, forces=np.full((n, 3), 0.01 * k), stress=np.zeros(6)
        )
        frames.append(atoms)
    source = tmp_path / "frames.extxyz"
    write(source, frames)
    out = tmp_path / "cache"
    assert main(["data", "convert", str(source), "-o", str(out), "--workers", "1"]) == 0
    dataset = GraphDataset(out)
    assert len(dataset) == 5
    graph, labels = dataset[3]
    assert labels.energy_per_atom == -3.0
    np.testing.assert_allclose(labels.forces, 0.03)
    assert graph.n_atoms == len(frames[3])


def test_a_frame_without_a_periodic_cell_is_skipped_and_reported_not_fatal(tmp_path, capsys):
    """A molecule written without a box among crystals: ``data convert`` used to stop with
    "error: Singular matrix" (pymatgen inverting a zero cell); now the crystals are converted,
    the molecule is listed in skipped.json with its reason, and ``data stats`` lists it as
    unusable without counting it."""
    import json

    from ase.build import molecule

    frames = [AseAtomsAdaptor.get_atoms(s) for s in varied_structures(3, seed=9, max_atoms=12)]
    frames.insert(1, molecule("H2O"))
    source = _labelled_file(tmp_path / "mixed.extxyz", frames)
    out = tmp_path / "cache"
    assert main(["data", "convert", str(source), "-o", str(out), "--workers", "1"]) == 0
    assert len(GraphDataset(out)) == 3
    (skipped,) = json.loads((out / "skipped.json").read_text())
    assert skipped["frame_id"] == "mixed-1"
    assert skipped["reason"].startswith("no periodic cell")
    capsys.readouterr()
    assert main(["data", "stats", str(source)]) == 0
    report = capsys.readouterr().out
    assert report.startswith("3 frames")
    assert "unusable (conversion skips them): 1" in report
    assert "frame mixed-1 of mixed:H2O (H2O): no periodic cell" in report


def test_a_source_whose_every_frame_is_skipped_fails_in_one_line_and_keeps_the_reasons(
    tmp_path, capsys
):
    """Two molecules without a box: the cache was empty and the command said nothing was
    wrong (exit 0); now it exits 1 naming the list of reasons, which it keeps."""
    import json

    from ase.build import molecule

    source = _labelled_file(tmp_path / "molecules.extxyz", [molecule("H2O"), molecule("CH4")])
    out = tmp_path / "cache"
    capsys.readouterr()
    assert main(["data", "convert", str(source), "-o", str(out), "--workers", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"data convert: no frame of {source} could be used: 2 skipped, the reasons in "
        f"{out / 'skipped.json'}"
    )
    assert len(json.loads((out / "skipped.json").read_text())) == 2


def _labelled_file(path, frames):
    """``frames`` (ASE Atoms) written to ``path`` with energy -3 eV/atom and zero forces."""
    for atoms in frames:
        n = len(atoms)
        atoms.calc = SinglePointCalculator(atoms, energy=-3.0 * n, forces=np.zeros((n, 3)))
    write(path, frames)
    return path
