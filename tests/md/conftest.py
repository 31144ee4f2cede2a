"""Fixtures for the md tests: small crystals as ASE Atoms, one torch thread per test.

MD and relaxation call the model on a handful of atoms at a time, and ASE's cell filter does
3x3 linear algebra; on a shared, loaded CPU, OpenMP and OpenBLAS threads spinning for such
small work cost far more than they gain (10x here), so these tests pin one thread of each and
restore the settings afterwards (OpenBLAS through threadpoolctl, when installed).
"""

from __future__ import annotations

import pytest

from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.md.calculator import as_atoms
from fastchgnet.model.potential import EagerPotential


@pytest.fixture(autouse=True)
def _one_thread_for_md(one_thread):
    """Every md test runs with tests/conftest.py's ``one_thread`` (it restores on teardown)."""


@pytest.fixture
def small_crystals():
    """Six varied crystals of at most 8 atoms, as ASE Atoms."""
    return [as_atoms(s) for s in varied_structures(6, seed=11, max_atoms=8)]


class CountingPotential:
    """A Potential that runs ``model`` eagerly and records the keywords and the number of
    graphs of every call."""

    def __init__(self, model) -> None:
        self.eager = EagerPotential(model)
        self.config = model.config
        self.calls: list[dict] = []
        self.sizes: list[int] = []

    def predict_graphs(self, graphs, **kwargs):
        self.calls.append(kwargs)
        self.sizes.append(len(graphs))
        return self.eager.predict_graphs(graphs, **kwargs)
