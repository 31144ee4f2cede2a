"""Fixtures for the chgnet-compatibility tests: one torch thread (the reference and ours run
side by side, as the parity tests), the reference package, LiMnO2."""

from __future__ import annotations

import warnings

import pytest

from tests.model.test_parity import TOLERANCE

__all__ = ["TOLERANCE"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every compat test runs with tests/conftest.py's ``one_thread``."""


@pytest.fixture(scope="session")
def chgnet_ref():
    """The reference package's modules (skip when chgnet is not installed)."""
    return pytest.importorskip("chgnet.model")


@pytest.fixture(scope="session")
def compat_model():
    pytest.importorskip("chgnet")
    from fastchgnet.compat import CHGNet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CHGNet.load(use_device="cpu", verbose=False)


@pytest.fixture(scope="session")
def limno2(reference_structures):
    return reference_structures[0]


def labelled_crystals(model, n: int, max_atoms: int) -> dict:
    """``n`` small crystals (at most ``max_atoms``) labelled by ``model``, energies shifted by
    30 meV/atom (a target the model must learn), stresses in VASP kBar as users pass them."""
    from fastchgnet.data.random_crystals import varied_structures

    structures = varied_structures(n, seed=8, max_atoms=max_atoms)
    predictions = model.predict_structure(structures)
    return {
        "structures": structures,
        "energies": [float(p["e"]) + 0.03 for p in predictions],
        "forces": [p["f"] for p in predictions],
        "stresses": [p["s"] / -0.1 for p in predictions],
        "magmoms": [p["m"] for p in predictions],
    }
