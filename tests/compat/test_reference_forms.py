"""The forms chgnet users rely on: our ``as_dict`` saved with ``torch.save`` loads with
``from_file``; prediction dicts hold numpy arrays (``e`` 0-d) as the reference's; an empty list
predicts to ``[]``; ``model_args`` key by key as the reference reports them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fastchgnet.compat import CHGNet

FEATURES = {"return_site_energies": True, "return_atom_feas": True, "return_crystal_feas": True}


@pytest.mark.parametrize("wrap", ["bare", "model"])
def test_torch_saved_as_dict_of_ours_loads_with_from_file(compat_model, limno2, tmp_path, wrap):
    saved = compat_model.as_dict()
    path = tmp_path / "fast_asdict.pt"
    torch.save(saved if wrap == "bare" else {"model": saved}, path)
    loaded = CHGNet.from_file(path)
    assert loaded.model_args == compat_model.model_args
    for name, tensor in compat_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    before = compat_model.predict_structure(limno2, task="e")["e"]
    assert loaded.predict_structure(limno2, task="e")["e"] == before


def _kinds(prediction: dict) -> dict:
    return {key: (type(v), v.dtype, v.shape) for key, v in prediction.items()}


@pytest.mark.parametrize("task", ["e", "efsm"])
def test_prediction_values_are_numpy_arrays_as_the_reference(
    chgnet_ref, compat_model, limno2, task
):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = chgnet_ref.CHGNet.load(use_device="cpu", verbose=False)
        theirs = reference.predict_structure(limno2, task=task, **FEATURES)
        theirs_list = reference.predict_structure([limno2, limno2], task=task, **FEATURES)
    mine = compat_model.predict_structure(limno2, task=task, **FEATURES)
    mine_list = compat_model.predict_structure([limno2, limno2], task=task, **FEATURES)
    assert _kinds(mine) == _kinds(theirs)
    assert [_kinds(p) for p in mine_list] == [_kinds(p) for p in theirs_list]
    assert isinstance(mine["e"], np.ndarray)
    assert torch.from_numpy(mine["e"]).shape == ()


def test_empty_list_predicts_to_an_empty_list(compat_model):
    assert compat_model.predict_structure([]) == []
    assert compat_model.predict_graph([]) == []


@pytest.mark.parametrize("name", ["0.3.0", "0.2.0", "r2scan"])
def test_model_args_match_the_reference_key_by_key(chgnet_ref, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = chgnet_ref.CHGNet.load(model_name=name, use_device="cpu", verbose=False)
        ours = CHGNet.load(name, use_device="cpu", verbose=False)
    assert ours.model_args == reference.model_args
    assert ours.todict() == reference.todict()


def test_new_model_args_are_the_reference_defaults(chgnet_ref):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert CHGNet().model_args == chgnet_ref.CHGNet().model_args
        given = {"n_conv": 3, "atom_fea_dim": 32}
        assert CHGNet(**given).model_args == chgnet_ref.CHGNet(**given).model_args
