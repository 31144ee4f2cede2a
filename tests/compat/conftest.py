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
