"""Re-sizing: a CompiledPotential with ``shrink_below`` moves to tighter capacities as the
graphs of its calls shrink, within ``max_shapes``; a relaxation through it ends where the
unpadded eager one does; the padding tally counts what every call wasted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.data.capacity import Counts, entries, fits, peak, shrunk, with_headroom
from fastchgnet.data.graph import build_graph
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.md.calculator import as_atoms, evaluate_graphs
from fastchgnet.md.relax import relax
from tests.compile.conftest import small_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def graphs():
    """Graphs of 1, 8, 12 and 2 atoms."""
    return [build_graph(s) for s in varied_structures(4, seed=11, max_atoms=8)]


def test_shrunk_capacity_is_a_geometric_step_never_below_the_rung():
    big = Counts(structures=4, atoms=40, short_bonds=100, long_bonds=900, angles=400)
    small = Counts(structures=1, atoms=8, short_bonds=20, long_bonds=150, angles=60)
    current = with_headroom(big, 0.3, 32)
    tighter = shrunk(current, small, 0.3, 32, shrink_below=0.5)
    assert tighter == with_headroom(small, 0.3, 32)
    assert entries(tighter) <= 0.5 * entries(current)
    assert shrunk(current, big, 0.3, 32, shrink_below=0.5) is None  # no gain: keep it
    rung = with_headroom(Counts(2, 20, 40, 300, 200), 0.3, 32)
    grown = shrunk(current, small, 0.3, 32, 0.5, at_least=rung)
    assert grown == rung  # the overflowed rung below is reused, not given a twin


def test_shrinking_stays_within_max_shapes_and_is_logged(graphs, caplog):
    model = small_model("direct", torch.float64).eval()
    potential = CompiledPotential(
        model, backend="aot_eager", headroom=0.2, round_to=8, shrink_below=0.5, max_shapes=2
    )
    calls = (graphs, graphs[1:3], graphs[:1], graphs[3:])
    with caplog.at_level("INFO", logger="fastchgnet.compile"):
        for chosen in calls:
            out = evaluate_graphs(potential, chosen, stress=False)
            eager = evaluate_graphs(model, chosen, stress=False)
            for a, b in zip(out, eager, strict=True):
                np.testing.assert_allclose(a["forces"], b["forces"], rtol=1e-10, atol=1e-10)
    assert caplog.text.count("shrunk to") == 1  # the last calls would shrink, but 2 is the bound
    assert len(potential.capacities) == potential.graphs_built == 2
    assert entries(potential.capacities[1]) <= 0.5 * entries(potential.capacities[0])
    report = potential.padding.report()
    used = [potential.capacity_for(chosen) for chosen in calls]  # no new shape: at the bound
    real = sum(Counts.of(chosen).entries for chosen in calls)
    assert (report["batches"], report["real"]) == (4, real)
    assert report["padded"] == sum(entries(c) for c in used) - real
    assert report["waste"] == pytest.approx(report["padded"] / real)


def test_without_shrink_below_one_shape_serves_smaller_calls(graphs):
    potential = CompiledPotential(small_model("direct").eval(), eager=True)
    for chosen in (graphs, graphs[:1], graphs[3:]):
        evaluate_graphs(potential, chosen, stress=False)
    assert len(potential.capacities) == 1


def test_resized_relaxation_ends_where_the_unpadded_eager_one_does(model, caplog):
    crystals = [as_atoms(s) for s in varied_structures(5, seed=11, max_atoms=8)]
    queue = [crystals[k] for k in (2, 1, 0, 3, 4)]  # 12 and 8 atoms first, then 1, 2, 2
    padded = CompiledPotential(
        model, eager=True, headroom=0.3, shrink_below=0.5, max_shapes=3, patience=2
    )
    with caplog.at_level("INFO", logger="fastchgnet.compile"):
        resized = relax(iter(queue), padded, fmax=0.5, steps=12, batch_size=2)
    unpadded = relax(queue, model, fmax=0.5, steps=12, batch_size=2)
    assert "shrunk to" in caplog.text
    assert 2 <= len(padded.capacities) <= 3
    for a, b in zip(resized, unpadded, strict=True):
        assert a.steps == b.steps
        assert a.energy == pytest.approx(b.energy, abs=1e-4)
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-4)
        np.testing.assert_allclose(a.atoms.cell.array, b.atoms.cell.array, atol=1e-4)


def test_past_max_shapes_or_max_oversize_calls_run_eagerly_unpadded(graphs):
    model = small_model("direct", torch.float64).eval()
    bounded = CompiledPotential(model, eager=True, max_shapes=1)
    frugal = CompiledPotential(model, eager=True, max_oversize=2.0)
    for potential in (bounded, frugal):
        first, second = (graphs[:1], graphs) if potential is bounded else (graphs, graphs[:1])
        evaluate_graphs(potential, first, stress=False)
        out = evaluate_graphs(potential, second, stress=False)  # too big / too small for it
        eager = evaluate_graphs(model, second, stress=False)
        for a, b in zip(out, eager, strict=True):
            np.testing.assert_allclose(a["forces"], b["forces"], rtol=1e-10, atol=1e-10)
        assert (len(potential.capacities), potential.eager_calls) == (1, 1)
        report = potential.padding.report()
        assert report["padded"] == entries(potential.capacities[0]) - Counts.of(first).entries
    assert bounded.capacity_for(graphs) is None  # a new shape would pass the bound


def test_patience_runs_eagerly_then_makes_one_capacity_for_the_peak(graphs):
    model = small_model("direct", torch.float64).eval()
    potential = CompiledPotential(model, eager=True, patience=2)
    calls = ([graphs[0]], [graphs[1]], [graphs[2], graphs[3]])
    for chosen in calls:
        out = evaluate_graphs(potential, chosen, stress=False)
        eager = evaluate_graphs(model, chosen, stress=False)
        for a, b in zip(out, eager, strict=True):
            np.testing.assert_allclose(a["forces"], b["forces"], rtol=1e-10, atol=1e-10)
    assert potential.eager_calls == 2
    (capacity,) = potential.capacities
    assert capacity == with_headroom(peak([Counts.of(c) for c in calls]), 0.2, 32)
    assert all(fits(capacity, Counts.of(chosen)) for chosen in calls)
    evaluate_graphs(potential, calls[1], stress=False)
    assert (len(potential.capacities), potential.eager_calls) == (1, 2)
