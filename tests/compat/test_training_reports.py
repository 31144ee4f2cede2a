"""compat ``StructureData`` and ``Trainer`` say what they cannot use and what they kept: bad
structures by index (at construction and when training skips them), chgnet's documented
label shapes, FastCHGNet's own checkpoints read by ``CHGNet.from_file``, Ctrl-C's checkpoint
and how to continue, and argument errors in the Trainer's own words."""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import warnings

import numpy as np
import pytest
import torch

from fastchgnet.compat import CHGNet, StructureData, Trainer, get_train_val_test_loader
from fastchgnet.data.frame import check_frame
from tests.compat.conftest import labelled_crystals


@pytest.fixture(scope="module")
def labelled(compat_model):
    return labelled_crystals(compat_model, 10, max_atoms=4)


def bad_labels(labelled: dict) -> dict:
    """``labelled`` with a NaN energy (3), a short forces list (2), a stress 1e6 kBar (5)."""
    labels = {key: list(value) for key, value in labelled.items()}
    labels["energies"][3] = float("nan")
    labels["forces"][2] = labels["forces"][2][:-1]
    labels["stresses"][5] = np.eye(3) * 1e6
    return labels


@pytest.fixture(scope="module")
def bad_run(labelled, tmp_path_factory):
    """One epoch on ``bad_labels`` (batch 2, efsm): (trainer, save_dir, stdout)."""
    out = tmp_path_factory.mktemp("bad_run")
    random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = StructureData(**bad_labels(labelled))
    loaders = get_train_val_test_loader(dataset, batch_size=2, train_ratio=0.6, val_ratio=0.2)
    trainer = Trainer(CHGNet.load(use_device="cpu", verbose=False), targets="efsm", epochs=1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        trainer.train(*loaders, save_dir=str(out))
    return trainer, out, printed.getvalue()


def test_structure_data_warns_of_each_structure_training_would_skip_by_index(labelled):
    with pytest.warns(UserWarning, match="StructureData: 3 of 10") as caught:
        dataset = StructureData(**bad_labels(labelled))
    text = str(caught[0].message)
    assert "3 of 10 structure(s) cannot be trained on" in text
    assert "structure 3: energy_per_atom is nan" in text
    assert "structure 2: forces has shape" in text
    assert "structure 5: stress up to 1e+05 GPa" in text
    assert sorted(dataset.problems) == [2, 3, 5]
    assert len(dataset) == 10  # kept, as chgnet's len


def test_trainer_prints_each_skipped_structure_by_index_and_the_skipped_json(bad_run):
    _, out, printed = bad_run
    assert "Trainer.train: 3 of 10 structure(s) skipped" in printed
    assert str(out / "cache" / "skipped.json") in printed
    for index in (2, 3, 5):
        assert f"  structure {index}: " in printed


def test_magmoms_of_chgnets_documented_n_by_1_shape_are_flattened(labelled):
    magmoms = [np.reshape(m, (-1, 1)) for m in labelled["magmoms"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = StructureData(**{**labelled, "magmoms": magmoms})
    for frame in dataset.frames(range(len(dataset))):
        check_frame(frame)  # raised "magmoms has shape (n, 1), expected (n,)"
    assert dataset[0][1]["m"].shape == (len(dataset.structures[int(dataset.keys[0])]),)


def test_a_voigt_stress_is_refused_naming_the_structure_shape_and_kbar(labelled):
    stresses = list(labelled["stresses"])
    stresses[4] = np.zeros(6)
    with pytest.raises(
        ValueError, match=r"stresses\[4\] has shape \(6,\), expected \(3, 3\) in VASP kBar"
    ):
        StructureData(**{**labelled, "stresses": stresses})


def test_an_all_nan_stress_is_a_missing_label_as_chgnet_masks_it(labelled):
    stresses = list(labelled["stresses"])
    stresses[1] = np.full((3, 3), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = StructureData(**{**labelled, "stresses": stresses}, shuffle=False)
    assert not dataset.problems
    assert next(iter(dataset.frames([1]))).stress is None


def test_from_file_reads_the_runs_checkpoint_its_step_folder_and_the_run_folder(bad_run):
    trainer, out, _ = bad_run
    (folder,) = (out / "checkpoints").glob("step-*")
    weights = trainer.model.state_dict()  # one epoch: the checkpoint holds the final weights
    for path in (folder / "rank-00000.pt", folder, out):
        model = CHGNet.from_file(path)
        assert isinstance(model, CHGNet)
        assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_ctrl_c_says_the_checkpoint_and_how_to_resume_and_the_model_holds_its_weights(
    labelled, tmp_path, monkeypatch
):
    import fastchgnet.train.run as run
    from fastchgnet.cli.train import main

    train_one_epoch = run.train_one_epoch

    def interrupted_epoch(state):
        os.kill(os.getpid(), signal.SIGINT)  # deferred: the step finishes, a checkpoint follows
        return train_one_epoch(state)

    monkeypatch.setattr(run, "train_one_epoch", interrupted_epoch)
    random.seed(0)
    dataset = StructureData(labelled["structures"], labelled["energies"], labelled["forces"])
    loaders = get_train_val_test_loader(dataset, batch_size=2, train_ratio=0.6, val_ratio=0.2)
    model = CHGNet.load(use_device="cpu", verbose=False)
    with pytest.raises(KeyboardInterrupt) as stop:
        Trainer(model, epochs=2).train(*loaders, save_dir=str(tmp_path))
    checkpoint = tmp_path.resolve() / "checkpoints" / "step-00000001" / "rank-00000.pt"
    text = str(stop.value)
    assert text.startswith("Trainer.train interrupted at step 1 (epoch 1): checkpoint at step 1")
    assert f"CHGNet.from_file('{checkpoint}')" in text
    assert f"fastchgnet train --resume --set run.out_dir={tmp_path.resolve()}" in text
    kept = CHGNet.from_file(checkpoint).state_dict()
    assert all(torch.equal(kept[k], v) for k, v in model.state_dict().items())
    # the command the message gives continues the run to its model.pt
    monkeypatch.setattr(run, "train_one_epoch", train_one_epoch)
    assert main(["--resume", "--set", f"run.out_dir={tmp_path.resolve()}"]) == 0
    assert (tmp_path / "model.pt").is_file()


@pytest.mark.parametrize(
    ("given", "error", "said"),
    [
        ({"epoch": 3}, TypeError, "unexpected keyword argument 'epoch'; did you mean 'epochs'?"),
        ({"learning_rat": 0.1}, TypeError, "did you mean 'learning_rate'?"),
        ({"zzz": 1}, TypeError, "unexpected keyword argument 'zzz'$"),
        ({"momentum": 0.9}, NotImplementedError, r"\['momentum'\] \(chgnet's SGD optimizer\)"),
        ({"epochs": 0}, ValueError, r"^Trainer\(epochs=0\): must be at least 1$"),
        ({"learning_rate": -1}, ValueError, r"^Trainer\(learning_rate=-1.0\): must be >= 0"),
    ],
)
def test_trainer_argument_errors_name_the_trainer_argument(compat_model, given, error, said):
    with pytest.raises(error, match=said):
        Trainer(compat_model, **given)
