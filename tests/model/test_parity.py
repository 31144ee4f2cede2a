"""Parity with the reference CHGNet package on the paper's structures and varied crystals.

Tolerances (issue 2): |Δe| <= 2e-5 eV/atom, |Δf| <= 3e-4 eV/Å, |Δs| <= 2e-3 GPa,
|Δm| <= 2e-4 μB. Both sides run in float32 and sum in different orders, so exact equality is
not expected. The force bound was 2e-4 until a 32-atom Al cell (seed 11) reached 2.1e-4: there
the reference's own float32 forces are 1.8e-4 eV/Å from our float64 forces, ours 5.7e-5. So
each comparison also holds our float32 result to our float64 one (``OWN_ROUND_OFF``): the
wider bound against the reference never hides an error of ours.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

from fastchgnet.data.random_crystals import varied_structures

TOLERANCE = {"e": 2e-5, "f": 3e-4, "s": 2e-3, "m": 2e-4}
#: float32 against float64 of our own model, the same structures
OWN_ROUND_OFF = {"e": 1e-5, "f": 1e-4, "s": 1e-3, "m": 1e-4}


def _max_differences(ours: list[dict], theirs: list[dict]) -> dict[str, float]:
    worst = dict.fromkeys(TOLERANCE, 0.0)
    for a, b in zip(ours, theirs, strict=True):
        for key in TOLERANCE:
            worst[key] = max(worst[key], float(np.abs(np.asarray(a[key]) - b[key]).max()))
    return worst


def _assert_parity(model, reference_chgnet, structures) -> None:
    ours = model.predict_structure(structures)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = reference_chgnet.predict_structure(structures)
    worst = _max_differences(ours, theirs)
    for key, limit in TOLERANCE.items():
        assert worst[key] <= limit, f"max |Δ{key}| = {worst[key]:.3g} > {limit}"
    exact = copy.deepcopy(model).double().predict_structure(structures)
    own = _max_differences(ours, exact)
    for key, limit in OWN_ROUND_OFF.items():
        assert own[key] <= limit, f"float32 vs float64: max |Δ{key}| = {own[key]:.3g} > {limit}"


def test_paper_structures_match_reference(model, reference_chgnet, reference_structures):
    _assert_parity(model, reference_chgnet, reference_structures)


def test_small_varied_crystals_match_reference(model, reference_chgnet):
    _assert_parity(model, reference_chgnet, varied_structures(24, seed=11, max_atoms=32))


@pytest.mark.slow
def test_hundred_varied_crystals_match_reference(model, reference_chgnet):
    structures = varied_structures(110, seed=0, max_atoms=140)
    assert max(len(s) for s in structures) >= 100
    _assert_parity(model, reference_chgnet, structures)


@pytest.mark.parametrize("version", ["0.2.0", "r2scan"])
def test_other_reference_versions_match(version, reference_structures):
    chgnet_model = pytest.importorskip("chgnet.model")
    from fastchgnet import FastCHGNet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = chgnet_model.CHGNet.load(model_name=version, use_device="cpu", verbose=False)
    _assert_parity(FastCHGNet.from_reference(version), reference, reference_structures)
