"""Captured training with dynamic sizes (CPU training's capture): one graph serves packed
batches of any atoms, bonds and angles within one capacity, equal to eager, never recompiled;
batches are padded in structures and short bonds only."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fastchgnet.compile import CapturedModel
from fastchgnet.data.capacity import Capacity, Counts, entries, fitted, packing_capacity
from fastchgnet.data.graph import build_graph
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.train.loading import PaddedCollate
from tests.compile.conftest import small_model
from tests.compile.test_capture import assert_same, loss_and_grads


def labelled(n: int, seed: int, max_atoms: int) -> list[tuple[object, object]]:
    graphs = [build_graph(s) for s in varied_structures(n, seed=seed, max_atoms=max_atoms)]
    rng = np.random.default_rng(seed)
    return [
        (
            g,
            SimpleNamespace(
                energy_per_atom=float(rng.normal()),
                forces=rng.normal(size=(g.n_atoms, 3)),
                stress=rng.normal(size=(3, 3)),
                magmoms=np.abs(rng.normal(size=g.n_atoms)),
            ),
        )
        for g in graphs
    ]


def capacity_for(items: list[tuple[object, object]], per_batch: float) -> Capacity:
    counts = [Counts.of([g]) for g, _ in items]
    sizes = np.array(
        [[c.atoms, c.short_bonds + c.long_bonds, c.angles, c.short_bonds] for c in counts]
    )
    return packing_capacity(sizes, per_batch)


def test_a_fitted_batch_keeps_the_capacity_in_structures_and_short_bonds_only():
    items = labelled(6, seed=3, max_atoms=12)
    capacity = capacity_for(items, 6)
    for chosen in (items[:2], items[2:6]):
        counts = Counts.of([g for g, _ in chosen])
        shape = fitted(capacity, counts)
        assert (shape.structures, shape.short_bonds) == (capacity.structures, capacity.short_bonds)
        assert shape.atoms >= counts.atoms + 1
        assert shape.atoms % 32 == 0
        assert shape.bonds - shape.short_bonds >= max(counts.long_bonds, 1)
        assert shape.angles >= counts.angles
        assert shape.angles % 32 == 0
        batch, _ = PaddedCollate(capacity, fit=True)(chosen)
        assert batch.atomic_numbers.shape[0] == shape.atoms
        assert batch.angle_edges.shape[0] == shape.angles
        assert batch.n_short_bonds == capacity.short_bonds
    assert entries(fitted(capacity, Counts.of([g for g, _ in items[:1]]))) < entries(capacity)
    with pytest.raises(ValueError, match="short_bonds"):
        fitted(Capacity(2, 10, 10, 10), Counts.of([g for g, _ in items[:1]]))


def packed(items: list, per_batch: float) -> tuple[Capacity, list[list[int]]]:
    """The packing capacity of ``items`` and its batches (as compiled training packs them)."""
    from fastchgnet.data.packing import plan_packed_batches

    counts = [Counts.of([g]) for g, _ in items]
    sizes = np.array(
        [[c.atoms, c.short_bonds + c.long_bonds, c.angles, c.short_bonds] for c in counts]
    )
    capacity = packing_capacity(sizes, per_batch)
    plan = plan_packed_batches(sizes, 1, capacity, seed=0)
    return capacity, [list(step[0]) for step in plan if len(step[0])]


def one_graph_equal_to_eager(
    model, backend: str, batches: list, rtol: float, atol: float
) -> CapturedModel:
    """Train-mode ``model`` captured with dynamic sizes on ``backend``: every batch's loss,
    prediction and gradients equal eager's, from one graph and no recompile."""
    model.train()
    eager = CapturedModel(model, eager=True)
    captured = CapturedModel(model, backend=backend, dynamic=True)
    for batch, labels in batches:
        assert_same(
            loss_and_grads(eager, batch, labels),
            loss_and_grads(captured, batch, labels),
            rtol=rtol,
            atol=atol,
        )
    assert (captured.stats.graphs, captured.stats.recompiles) == (1, 0)
    return captured


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("forces", ["conservative", "direct"])
def test_one_dynamic_graph_serves_batches_of_any_size_equal_to_eager(forces):
    items = labelled(16, seed=10, max_atoms=16)
    capacity, plan = packed(items, 3)
    collate = PaddedCollate(capacity, fit=True)
    batches = [collate([items[i] for i in chosen]) for chosen in plan]
    atoms = [b.atomic_numbers.shape[0] for b, _ in batches]
    # the first batch, which is traced, has 32 atoms: the width of the small model's gated
    # layers (2 x 16), so a symbol shared by equal sizes would fix every batch's atoms at 32
    batches.sort(key=lambda b: b[0].atomic_numbers.shape[0] != 32)
    assert set(atoms) == {32, 64}, atoms
    assert len({b.angle_edges.shape[0] for b, _ in batches}) > 1
    captured = one_graph_equal_to_eager(small_model(forces), "aot_eager", batches, 1e-5, 1e-6)
    assert captured.store_key("loss", batches[0][0], batches[0][1]) is None


@pytest.mark.slow
def test_inductor_builds_one_graph_for_sums_either_side_of_4096():
    """Inductor's C++ sums pick their accumulation by length (above 4096 terms or not); the
    first call builds without guarding on it, so batches with fewer and with more than 4096
    angles run the one graph."""
    items = labelled(60, seed=7, max_atoms=24)
    capacity, plan = packed(items, 12)
    collate = PaddedCollate(capacity, fit=True)
    batches = [collate([items[i] for i in chosen]) for chosen in plan]
    batches.sort(key=lambda b: b[0].angle_edges.shape[0])
    batches = [batches[0], batches[-1]]
    counts = [b.angle_edges.shape[0] for b, _ in batches]
    assert counts[0] <= 4096 < counts[1], counts
    one_graph_equal_to_eager(small_model("conservative"), "inductor", batches, 1e-4, 1e-5)


def test_cuda_graphs_are_not_used_with_dynamic_sizes():
    model = small_model("direct")
    captured = CapturedModel(model, backend="aot_eager", dynamic=True, cuda_graphs=True)
    batch = SimpleNamespace(lattice=torch.zeros(1, 3, 3))
    assert not captured._use_cuda_graphs(batch)


@pytest.mark.usefixtures("one_thread")
def test_a_dynamic_trace_is_read_back_from_the_store_in_a_later_process(
    tmp_path, monkeypatch, caplog
):
    """The symbolic trace is kept in the store: a later CapturedModel (a new process) with the
    same model and loss reads it back instead of tracing, and computes what eager does; a
    frozen parameter, another loss or other outputs key another trace; a damaged file is
    reported, removed and traced again. Each trace made (a cold build follows) starts
    building inductor's prefix header in a child process; a trace read back does not."""
    import fastchgnet.compile.capture as capture_module
    import fastchgnet.compile.package_build as package_build
    from fastchgnet.compile.store import CompiledStore, json_digest
    from fastchgnet.model.loss import LossConfig

    traces: list[int] = []
    trace = capture_module.trace_program

    def counting(*args, **kwargs):
        traces.append(1)
        return trace(*args, **kwargs)

    monkeypatch.setattr(capture_module, "trace_program", counting)
    warmups: list[bool] = []
    from torch._inductor import codecache

    codecache._precompile_header.cache_clear()  # as a new process: no header found yet
    monkeypatch.setattr(
        package_build,
        "start_warm_headers",
        lambda options, **kw: warmups.append(kw["kernel_groups"]),
    )
    items = labelled(6, seed=4, max_atoms=10)
    capacity, plan = packed(items, 3)
    batch, labels = PaddedCollate(capacity, fit=True)([items[i] for i in plan[0]])
    model = small_model("direct").train()
    expected = loss_and_grads(CapturedModel(model, eager=True), batch, labels)
    store = CompiledStore(tmp_path)

    def captured(**options) -> CapturedModel:
        return CapturedModel(model, backend="aot_eager", dynamic=True, store=store, **options)

    assert_same(expected, loss_and_grads(captured(), batch, labels), rtol=1e-5, atol=1e-6)
    (stored,) = (tmp_path / "traced").iterdir()
    assert len(traces) == 1
    assert_same(expected, loss_and_grads(captured(), batch, labels), rtol=1e-5, atol=1e-6)
    assert len(traces) == 1  # read back, not traced
    assert warmups == [True]  # the one trace made started the header's build

    def digest(**options) -> str:
        plain = captured(**options)
        return json_digest(plain._about(plain._key("loss", batch, labels)))

    first = digest()
    assert digest(loss_config=LossConfig(forces=3.0)) != first
    assert digest(compute_stress=False) != first
    model.atom_embedding.weight.requires_grad_(False)
    assert digest() != first
    model.atom_embedding.weight.requires_grad_(True)
    assert digest() == first
    stored.write_bytes(stored.read_bytes()[:-100])
    assert_same(expected, loss_and_grads(captured(), batch, labels), rtol=1e-5, atol=1e-6)
    assert len(traces) == 2
    assert warmups == [True, True]
    assert "is unusable" in caplog.text
