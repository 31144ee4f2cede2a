"""compat ``CHGNetCalculator``'s results as chgnet's, run side by side on LiMnO2: the same
keys and float types (the model's numpy outputs: float32 for a float32 model)."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
from pymatgen.io.ase import AseAtomsAdaptor

from fastchgnet.compat import CHGNetCalculator
from tests.compat.test_usage import EXTRA


def reference_calculator(chgnet_ref, reference_chgnet, **kwargs):
    """chgnet's calculator over its 0.3.0 model, quietly (it prints its device)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return chgnet_ref.CHGNetCalculator(reference_chgnet, use_device="cpu", **kwargs)


def results_of(calculator, structure, **kwargs) -> dict:
    """``calculator.calculate`` on ``structure``'s atoms (``kwargs``: task=), its results."""
    calculator.calculate(AseAtomsAdaptor.get_atoms(structure), **kwargs)
    return dict(calculator.results)


def test_crystal_fea_is_float32_as_the_reference(
    chgnet_ref, reference_chgnet, compat_model, limno2
):
    ours = results_of(CHGNetCalculator(compat_model, use_device="cpu"), limno2)
    theirs = results_of(reference_calculator(chgnet_ref, reference_chgnet), limno2)
    assert ours["crystal_fea"].dtype == theirs["crystal_fea"].dtype == np.float32
    assert {key: np.asarray(ours[key]).dtype for key in theirs} == {
        key: np.asarray(value).dtype for key, value in theirs.items()
    }
    gap = np.abs(ours["crystal_fea"] - theirs["crystal_fea"]).max()
    assert gap <= EXTRA["crystal_fea"]


def test_crystal_fea_of_a_double_model_is_float64(compat_model, limno2):
    double = type(compat_model).from_dict(compat_model.as_dict()).double()
    ours = results_of(CHGNetCalculator(double, use_device="cpu"), limno2)
    assert ours["crystal_fea"].dtype == ours["forces"].dtype == np.float64
    assert ours["crystal_fea"] == pytest.approx(
        results_of(CHGNetCalculator(compat_model, use_device="cpu"), limno2)["crystal_fea"],
        abs=EXTRA["crystal_fea"],
    )
