"""The forms chgnet users rely on: our ``as_dict`` saved with ``torch.save`` loads with
``from_file``; prediction dicts hold numpy arrays (``e`` 0-d) as the reference's; an empty list
predicts to ``[]``; ``model_args`` key by key as the reference reports them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch


FEATURES = {"return_site_energies": True, "return_atom_feas": True, "return_crystal_feas": True}


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
