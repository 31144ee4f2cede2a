"""The reference README's fine-tuning block with the import swapped: StructureData,
get_train_val_test_loader and Trainer run our training and train the model in place."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tests.compat.conftest import labelled_crystals


@pytest.fixture(scope="module")
def labelled(compat_model):
    return labelled_crystals(compat_model, 12, max_atoms=8)


def test_finetune_block_trains_the_model_in_place(labelled, tmp_path):
    from fastchgnet.compat import CHGNet, StructureData, Trainer, get_train_val_test_loader

    random.seed(0)  # StructureData and the loaders shuffle with Python's random, as chgnet's
    chgnet = CHGNet.load(use_device="cpu", verbose=False)
    before = {k: v.clone() for k, v in chgnet.state_dict().items()}
    dataset = StructureData(
        structures=labelled["structures"],
        energies=labelled["energies"],
        forces=labelled["forces"],
        stresses=labelled["stresses"],
        magmoms=labelled["magmoms"],
    )
    train_loader, val_loader, test_loader = get_train_val_test_loader(
        dataset, batch_size=4, train_ratio=0.5, val_ratio=0.25
    )
    trainer = Trainer(
        model=chgnet,
        targets="efsm",
        optimizer="Adam",
        criterion="MSE",
        learning_rate=2e-3,
        epochs=3,
        use_device="cpu",
    )
    trainer.train(train_loader, val_loader, test_loader, save_dir=str(tmp_path))

    assert trainer.model is chgnet
    assert any(not torch.equal(before[k], v) for k, v in chgnet.state_dict().items())
    history = trainer.training_history["e"]
    assert len(history["val"]) == 3
    assert np.isfinite(history["test"])
    assert history["val"][-1] < 0.03, "the 30 meV/atom shift must be partly learned"
    # the run's own files: config with the user's split, our model file that from_file reads
    assert (tmp_path / "model.pt").is_file()
    assert (tmp_path / "config.json").is_file()
    best_epoch = int(np.argmin(history["val"])) + 1
    assert (tmp_path / "best_model.txt").read_text().startswith(f"epoch {best_epoch}:")
    assert isinstance(trainer.get_best_model(), CHGNet)
    reloaded = CHGNet.from_file(tmp_path / "model.pt")
    structure = labelled["structures"][0]
    assert reloaded.predict_structure(structure)["e"] == pytest.approx(
        chgnet.predict_structure(structure)["e"], abs=1e-6
    )


def test_structure_data_rejects_inconsistent_labels(labelled):
    from fastchgnet.compat import StructureData

    with pytest.raises(RuntimeError, match=r"len\(forces\)=11"):
        StructureData(labelled["structures"], labelled["energies"], labelled["forces"][:11])
    with pytest.raises(TypeError, match="0 is not a pymatgen Structure"):
        StructureData([object()], [0.0], [np.zeros((1, 3))])


def test_a_dataset_whose_every_frame_is_skipped_says_so_and_where_to_look(labelled, tmp_path):
    from fastchgnet.compat import CHGNet, StructureData, Trainer, get_train_val_test_loader

    random.seed(0)
    forces = [f[:3] for f in labelled["forces"]]  # (3, 3) for every structure: each skipped
    dataset = StructureData(labelled["structures"], labelled["energies"], forces)
    loaders = get_train_val_test_loader(dataset, batch_size=4, train_ratio=0.5, val_ratio=0.25)
    trainer = Trainer(model=CHGNet.load(use_device="cpu", verbose=False), epochs=1)
    with pytest.raises(ValueError, match=r"no structure for training .*skipped\.json"):
        trainer.train(*loaders, save_dir=str(tmp_path))
