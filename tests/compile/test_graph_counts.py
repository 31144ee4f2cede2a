"""Graphs built and graphs loaded are counted apart, for both backends that keep graphs in the
on-disk store: a graph loaded ready-made is not a build (``CaptureStats.graphs``,
``CompiledPotential.graphs_built``), and a potential with only loaded graphs has graphs."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from fastchgnet.compile import stored
from fastchgnet.compile.capture import CaptureStats
from fastchgnet.compile.potential import CompiledPotential
from tests.compile.conftest import small_model

KEY = ("predict", False, False, (8, 16, 32, 64))


class FakeStore:
    """A store that has ``kept`` programs ready and builds the others (nothing on disk)."""

    root = "fake-store"

    def __init__(self, kept: bool) -> None:
        self.kept, self.builds = kept, 0

    def load(self, store_key: str):
        return (lambda *inputs: inputs) if self.kept else None

    def build(self, store_key, traced, inputs, about, options):
        self.builds += 1
        return lambda *inputs: inputs


def fake_captured(store: FakeStore) -> SimpleNamespace:
    return SimpleNamespace(
        store=store,
        store_key=lambda kind, batch, labels: "key",
        stats=CaptureStats(),
        model=None,
        _state=lambda: [],
        _compiled={},
    )


def test_a_program_loaded_from_the_store_counts_as_loaded_not_built(monkeypatch):
    batch = SimpleNamespace(lattice=torch.zeros(1, 3, 3))
    monkeypatch.setattr(stored, "trace_program", lambda *args: "traced")
    monkeypatch.setattr(stored, "batch_inputs", lambda batch: [])
    loading = fake_captured(FakeStore(kept=True))
    stored.program_from_store(loading, KEY, None, batch, None, {})
    assert (loading.stats.graphs, loading.stats.loaded) == (0, 1)
    building = fake_captured(FakeStore(kept=False))
    stored.program_from_store(building, KEY, None, batch, None, {})
    assert (building.stats.graphs, building.stats.loaded) == (1, 0)
    assert building.store.builds == 1
    assert loading.stats.keys == building.stats.keys == [KEY]


def test_a_potential_with_only_loaded_graphs_has_graphs_and_built_none():
    potential = CompiledPotential(small_model("direct", torch.float64), store=None)
    assert not potential.has_graphs
    potential.captured[False, False].stats.loaded = 2
    assert (potential.graphs_built, potential.graphs_loaded) == (0, 2)
    assert potential.has_graphs
    potential.captured[True, False].stats.graphs = 1
    assert (potential.graphs_built, potential.graphs_loaded) == (1, 2)
