"""``fastchgnet predict --model`` reads our training checkpoints as ``model.init`` does: a
checkpoint file, and an interrupted run's folder (no model.pt: its newest checkpoint, named)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastchgnet.cli.commands import main
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.train.checkpoint import latest_checkpoint, rank_file
from fastchgnet.train.model_setup import load_from_path
from fastchgnet.train.run import train
from tests.train.helpers import small_cache, tiny_config


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A one-epoch tiny run whose model.pt is gone, as when a run is stopped early."""
    root = tmp_path_factory.mktemp("predict-checkpoint")
    cache = small_cache(root / "cache", n=16)
    out = root / "run"
    train(tiny_config(cache, out, "optim.epochs=1", "run.threads=1"))
    (out / "model.pt").unlink()
    return out


@pytest.fixture(scope="module")
def structure_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("structure") / "crystal.cif"
    varied_structures(1, seed=2, max_atoms=4)[0].to(filename=str(path))
    return path


def predicted_energy(tmp_path, structure_file, model_spec: str) -> float:
    out = tmp_path / "out.json"
    command = ["predict", str(structure_file), "--model", model_spec, "-o", str(out)]
    assert main([*command, "--overwrite"]) == 0  # called twice in one test
    return json.loads(out.read_text())[0]["energy_per_atom_eV"]


def test_predict_reads_a_training_checkpoint_file(interrupted_run, structure_file, tmp_path):
    newest = rank_file(latest_checkpoint(interrupted_run / "checkpoints"), 0)
    energy = predicted_energy(tmp_path, structure_file, str(newest))
    from pymatgen.core import Structure

    expected = load_from_path(newest).eval().predict_structure(Structure.from_file(structure_file))
    assert energy == pytest.approx(float(np.asarray(expected["e"])), abs=1e-6)


def test_predict_on_an_interrupted_run_folder_names_its_newest_checkpoint(
    interrupted_run, structure_file, tmp_path, capsys
):
    newest = rank_file(latest_checkpoint(interrupted_run / "checkpoints"), 0)
    from_folder = predicted_energy(tmp_path, structure_file, str(interrupted_run))
    assert f"weights of training checkpoint {newest}" in capsys.readouterr().err
    assert from_folder == predicted_energy(tmp_path, structure_file, str(newest))


def test_loading_a_checkpoint_as_a_model_file_says_what_it_is(interrupted_run):
    from fastchgnet import FastCHGNet

    newest = rank_file(latest_checkpoint(interrupted_run / "checkpoints"), 0)
    with pytest.raises(ValueError, match="is a fastchgnet training checkpoint"):
        FastCHGNet.load(newest)


def test_model_layer_knows_the_training_checkpoint_format_by_its_name() -> None:
    from fastchgnet.model.io import TRAIN_CHECKPOINT_FORMAT
    from fastchgnet.train.checkpoint import FORMAT

    assert TRAIN_CHECKPOINT_FORMAT == FORMAT


def test_relax_and_md_read_a_training_checkpoint_too(interrupted_run, structure_file, tmp_path):
    """The loader is the CLI's one (``inputs.load_model``): relax and md take what predict
    takes."""
    relaxed = tmp_path / "relaxed.extxyz"
    args = ["relax", str(structure_file), "--model", str(interrupted_run), "-o", str(relaxed)]
    assert main([*args, "--steps", "2"]) == 0
    assert relaxed.is_file()
    trajectory = tmp_path / "md.extxyz"
    args = ["md", str(structure_file), "--model", str(interrupted_run), "-o", str(trajectory)]
    assert main([*args, "--steps", "2"]) == 0
    assert trajectory.is_file()
