"""compat ``StructureData`` and ``Trainer`` answer chgnet's calls: ``ds[i]`` and ``len(ds)``,
``StructureData.from_vasp``, ``Trainer(targets="em")`` and ``Trainer.load``."""

from __future__ import annotations

import warnings
import zipfile

import numpy as np
import pytest
import torch

from fastchgnet.compat import CHGNet, StructureData, Trainer, get_train_val_test_loader
from tests.conftest import SHARED


@pytest.fixture(scope="module")
def labels(compat_model, limno2):
    prediction = compat_model.predict_structure(limno2)
    return {
        "structures": [limno2, limno2.copy()],
        "energies": [float(prediction["e"]) + 0.01] * 2,
        "forces": [prediction["f"]] * 2,
        "stresses": [prediction["s"] / -0.1] * 2,  # VASP kBar, as users pass them
        "magmoms": [-prediction["m"]] * 2,
        "structure_ids": ["mp-18767", "mp-18767-b"],
    }


def test_subscript_and_len_give_chgnets_graph_and_targets(chgnet_ref, labels):
    from chgnet.data.dataset import StructureData as ReferenceData

    ours = StructureData(**labels, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = ReferenceData(**labels, shuffle=False)
        theirs_graph, theirs = reference[1]
    assert len(ours) == len(reference) == 2
    graph, targets = ours[1]
    assert (graph.graph_id, graph.mp_id) == (theirs_graph.graph_id, theirs_graph.mp_id)
    assert set(targets) == set(theirs)
    for key, value in theirs.items():
        assert targets[key].dtype == value.dtype, key
        torch.testing.assert_close(targets[key], value, rtol=1e-6, atol=1e-6)


def test_from_vasp_reads_the_runs_frames(chgnet_ref, tmp_path):
    from chgnet.data.dataset import StructureData as ReferenceData

    name = "parse-vasp-with-magmoms"
    archive = SHARED / "data" / "reference" / f"{name}.zip"
    if not archive.is_file():
        pytest.skip(f"{archive} not present (shared reference data)")
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = ReferenceData.from_vasp(str(tmp_path / name), shuffle=False)
    ours = StructureData.from_vasp(str(tmp_path / name), shuffle=False)
    assert len(ours) == len(reference)
    graph, targets = ours[0]
    np.testing.assert_allclose(targets["f"], reference[0][1]["f"], atol=1e-6)
    assert graph.mp_id == reference[0][0].mp_id


def test_targets_take_any_chgnet_combination(compat_model):
    trainer = Trainer(compat_model, targets="em")
    assert trainer.loss.forces == 0.0
    assert trainer.loss.magmoms > 0
    assert set(trainer.training_history) == {"e", "m"}
    with pytest.raises(ValueError, match="targets='fs'"):
        Trainer(compat_model, targets="fs")


def test_a_converter_with_other_cutoffs_than_the_model_is_refused(labels, tmp_path):
    from fastchgnet.compat import CrystalGraphConverter

    dataset = StructureData(**labels, graph_converter=CrystalGraphConverter(5, 3))
    loaders = get_train_val_test_loader(dataset, batch_size=1, train_ratio=0.5, val_ratio=0.5)
    model = CHGNet.load(use_device="cpu", verbose=False)
    with pytest.raises(ValueError, match=r"cutoffs \(5, 3\) Å differ from the model's"):
        Trainer(model, epochs=1).train(*loaders, save_dir=str(tmp_path))


def test_trainer_load_reads_a_chgnet_trainer_file(chgnet_ref, labels, tmp_path, capsys):
    from chgnet.data.dataset import StructureData as ReferenceData
    from chgnet.trainer import Trainer as ReferenceTrainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = chgnet_ref.CHGNet.load(use_device="cpu", verbose=False)
        dataset = ReferenceData(**labels)
        train, val, _ = get_reference_loaders(dataset)
        trainer = ReferenceTrainer(model=model, targets="efs", epochs=2, use_device="cpu")
        trainer.train(train, val, None, save_dir=str(tmp_path))
    path = sorted(tmp_path.glob("epoch*.pth.tar"))[0]  # chgnet keeps the last epoch's
    loaded = Trainer.load(str(path))
    assert "Loaded model params = 412,525" in capsys.readouterr().out
    assert (loaded.targets, loaded.epochs) == ("efs", 0)
    assert loaded.loss.stress == pytest.approx(0.1)
    expected = CHGNet.from_file(path).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.model.state_dict().items())
    assert len(loaded.training_history["e"]["train"]) == 2
    loaded.train(None, None, save_dir=str(tmp_path / "ours"))  # nothing left, as chgnet's
    assert "no epochs left" in capsys.readouterr().out
    state = torch.load(path, weights_only=True)
    state["trainer_args"]["epochs"] = 3
    torch.save(state, tmp_path / "three.pth.tar")
    with pytest.warns(UserWarning, match=r"2 epoch\(s\) done; the 1 left start a fresh"):
        assert Trainer.load(str(tmp_path / "three.pth.tar")).epochs == 1


def get_reference_loaders(dataset):
    from chgnet.data.dataset import get_train_val_test_loader as reference_loaders

    return reference_loaders(dataset, batch_size=1, train_ratio=0.5, val_ratio=0.5)


def test_em_training_runs_and_records_energy_and_magmom_history(labels, tmp_path):
    model = CHGNet.load(use_device="cpu", verbose=False)
    dataset = StructureData(**labels)
    loaders = get_train_val_test_loader(dataset, batch_size=1, train_ratio=0.5, val_ratio=0.5)
    trainer = Trainer(model, targets="em", epochs=1, use_device="cpu")
    trainer.train(*loaders, save_dir=str(tmp_path))
    assert set(trainer.training_history) == {"e", "m"}
    assert len(trainer.training_history["m"]["val"]) == 1
