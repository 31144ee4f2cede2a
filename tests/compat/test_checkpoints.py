"""Checkpoints users already have: chgnet Trainer files, pretrained files of 0.2.0/0.3.0/r2scan,
``as_dict`` dicts; read with weights_only=True; bad files are refused naming the file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fastchgnet.compat import CHGNet
from fastchgnet.model.reference import checkpoint_path
from tests.model.test_parity import TOLERANCE


def assert_same_predictions(ours: CHGNet, reference, structures) -> None:
    """|Δ| of e, f, s, m within the parity tolerances (a one-item list gives one dict, as
    in the reference)."""
    mine = ours.predict_structure(structures)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = reference.predict_structure(structures)
    if len(structures) == 1:
        mine, theirs = [mine], [theirs]
    for a, b in zip(mine, theirs, strict=True):
        for key, limit in TOLERANCE.items():
            worst = float(np.abs(np.asarray(a[key]) - b[key]).max())
            assert worst <= limit, f"|Δ{key}| = {worst:.3g} > {limit}"


@pytest.fixture(scope="module")
def trainer_files(tmp_path_factory, chgnet_ref, limno2):
    """Files chgnet's own Trainer writes (epoch, bestE, bestF) after one step on LiMnO2."""
    from chgnet.data.dataset import StructureData, get_train_val_test_loader
    from chgnet.trainer import Trainer

    save_dir = tmp_path_factory.mktemp("chgnet-trainer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = chgnet_ref.CHGNet.load(use_device="cpu", verbose=False)
        label = model.predict_structure(limno2)
        dataset = StructureData(
            structures=[limno2] * 2,
            energies=[float(label["e"]) + 0.05] * 2,
            forces=[label["f"] * 1.1] * 2,
            stresses=[label["s"] * -10] * 2,  # VASP kBar
            magmoms=[label["m"]] * 2,
        )
        train, val, _ = get_train_val_test_loader(
            dataset, batch_size=2, train_ratio=0.5, val_ratio=0.5
        )
        trainer = Trainer(
            model=model, targets="efsm", learning_rate=1e-2, epochs=1, use_device="cpu"
        )
        trainer.train(train, val, None, save_dir=str(save_dir))
    return save_dir


def test_chgnet_trainer_checkpoint_predicts_equal_numbers(
    trainer_files, chgnet_ref, reference_structures
):
    files = sorted(trainer_files.glob("*.pth.tar"))
    assert {f.name[:5] for f in files} >= {"epoch", "bestE", "bestF"}
    best = next(f for f in files if f.name.startswith("bestE"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = chgnet_ref.CHGNet.from_file(str(best))
    assert_same_predictions(CHGNet.from_file(best), reference, reference_structures)
    loaded = [CHGNet.from_file(path).state_dict() for path in files]
    for state in loaded[1:]:  # one epoch: the epoch and best files hold the same weights
        assert all(torch.equal(state[k], loaded[0][k]) for k in state)
    pretrained = CHGNet.load(use_device="cpu", verbose=False)
    trained = CHGNet.from_file(best).predict_structure(reference_structures[0])
    before = pretrained.predict_structure(reference_structures[0])
    assert abs(float(trained["e"] - before["e"])) > 1e-4, "one step must have moved the weights"


@pytest.mark.parametrize("version", ["0.3.0", "0.2.0", "r2scan"])
def test_packaged_files_keep_their_cutoffs_and_composition(
    version, chgnet_ref, reference_structures
):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = chgnet_ref.CHGNet.load(model_name=version, use_device="cpu", verbose=False)
    ours = CHGNet.from_file(checkpoint_path(version))
    assert ours.config.atom_cutoff == float(reference.model_args["atom_graph_cutoff"])
    expected = reference.composition_model.fc.weight.detach().reshape(-1)
    assert torch.equal(ours.composition.energies, expected)
    assert_same_predictions(ours, reference, reference_structures)


def test_reference_as_dict_loads_and_ours_round_trips(chgnet_ref, compat_model, limno2, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = chgnet_ref.CHGNet.load(use_device="cpu", verbose=False)
    assert_same_predictions(CHGNet.from_dict(reference.as_dict()), reference, [limno2])
    torch.save(reference.as_dict(), tmp_path / "as_dict.pt")
    assert_same_predictions(CHGNet.from_file(tmp_path / "as_dict.pt"), reference, [limno2])
    again = CHGNet.from_dict(compat_model.as_dict())
    assert again.model_args["version"] == "0.3.0"
    for a, b in zip(again.state_dict().values(), compat_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_file_with_pickled_callable_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth.tar"
    state = CHGNet.from_file(checkpoint_path("0.3.0"))
    torch.save({"model": {"model_args": {}, "state_dict": {}}, "hook": Payload()}, path)
    del state
    with pytest.raises(ValueError, match=r"evil\.pth\.tar: refused.*pickled"):
        CHGNet.from_file(path)
    assert not marker.exists()


def test_corrupt_file_is_named(tmp_path):
    good = checkpoint_path("0.3.0").read_bytes()
    path = tmp_path / "cut.pth.tar"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"cut\.pth\.tar: not a readable model file"):
        CHGNet.from_file(path)


def test_other_architecture_is_named(tmp_path):
    other = torch.nn.Sequential(torch.nn.Linear(3, 3))
    path = tmp_path / "mace.pt"
    torch.save({"state_dict": other.state_dict(), "hyperparameters": {"r_max": 5.0}}, path)
    with pytest.raises(ValueError, match=r"mace\.pt: not a CHGNet checkpoint"):
        CHGNet.from_file(path)
    torch.save({"model_args": {"non_linearity": "relu"}, "state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"mace\.pt: non_linearity='relu' is not supported"):
        CHGNet.from_file(path)
    torch.save({"model_args": {"n_conv": 3}, "state_dict": dict(other.state_dict())}, path)
    with pytest.raises(ValueError, match=r"mace\.pt: weights do not fit"):
        CHGNet.from_file(path)


def test_missing_file_is_named():
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth\.tar"):
        CHGNet.from_file(Path("nowhere.pth.tar"))


def test_as_dict_of_a_float64_model_loads_float64_to_the_bit():
    from fastchgnet.model.config import ModelConfig
    from fastchgnet.testing import randomize_model

    model = randomize_model(CHGNet(ModelConfig()).double(), seed=3)  # float64 draws
    kept = CHGNet.from_dict(model.as_dict()).state_dict()
    for name, value in model.state_dict().items():
        assert kept[name].dtype == value.dtype, name
        assert torch.equal(kept[name], value), name
