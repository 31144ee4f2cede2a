"""collate: flat tensors with offsets that keep every graph's meaning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastchgnet import build_graph, collate
from fastchgnet.data.batch import FIELDS, GraphBatch
from fastchgnet.data.random_crystals import varied_structures

GRAPHS = [build_graph(s) for s in varied_structures(6, seed=3, max_atoms=24)]


def test_every_batch_field_is_registered_once():
    assert set(FIELDS) == {f.name for f in GraphBatch.__dataclass_fields__.values()}


def test_collate_offsets_atoms_and_bonds():
    batch = collate(GRAPHS)
    assert batch.n_atoms.tolist() == [g.n_atoms for g in GRAPHS]
    assert batch.bond_atoms.shape == (sum(g.n_bonds for g in GRAPHS), 2)
    # each bond joins two atoms of its own structure
    owner = batch.atom_structure[batch.bond_atoms]
    assert (owner[:, 0] == batch.bond_structure).all()
    assert (owner[:, 1] == batch.bond_structure).all()


def test_collated_angles_point_at_the_same_edges():
    batch = collate(GRAPHS)
    total = batch.n_bonds
    centres = torch.cat([batch.bond_atoms[:, 0], batch.bond_atoms[:, 1]])
    neighbours = torch.cat([batch.bond_atoms[:, 1], batch.bond_atoms[:, 0]])
    atom_offset = np.cumsum([0] + [g.n_atoms for g in GRAPHS])
    start = 0
    for k, graph in enumerate(GRAPHS):
        got = batch.angle_edges[start : start + graph.n_angles]
        start += graph.n_angles
        local_c = graph.edge_centres()[graph.angle_edges] + atom_offset[k]
        local_n = graph.edge_neighbours()[graph.angle_edges] + atom_offset[k]
        np.testing.assert_array_equal(centres[got].numpy(), local_c)
        np.testing.assert_array_equal(neighbours[got].numpy(), local_n)
    assert start == batch.angle_edges.shape[0]
    assert int(batch.angle_edges.max()) < 2 * total


def test_collate_casts_floats_and_moves():
    batch = collate(GRAPHS, dtype=torch.float64).to("cpu", dtype=torch.float32)
    assert batch.frac_coords.dtype == torch.float32
    assert batch.atomic_numbers.dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_single_graph_collates_as_in_a_batch_and_shares_no_memory(dtype):
    from fastchgnet.data.batch import _many

    isolated = build_graph(varied_structures(1, seed=5, max_atoms=2)[0], allow_isolated=True)
    for graph in [*GRAPHS, isolated]:
        one, general = collate([graph], dtype), _many([graph], dtype)
        assert one.n_short_bonds == general.n_short_bonds
        for name in (name for name in FIELDS if name != "n_short_bonds"):
            got, want = getattr(one, name), getattr(general, name)
            assert got.dtype == want.dtype, name
            assert got.is_contiguous(), name
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
        before = graph.bond_atoms.copy(), graph.frac_coords.copy()
        one.bond_atoms.fill_(-1)
        one.frac_coords.fill_(-1)
        np.testing.assert_array_equal(graph.bond_atoms, before[0])
        np.testing.assert_array_equal(graph.frac_coords, before[1])


def test_collate_needs_a_graph():
    with pytest.raises(ValueError, match="at least one"):
        collate([])


def test_one_host_copy_gives_every_tensor_back_with_its_shape_and_dtype(monkeypatch):
    from fastchgnet.data.batch import one_host_copy

    _, copies = _count_copies(monkeypatch)
    rng = torch.Generator().manual_seed(0)
    values = {
        "energy": torch.randn(3, generator=rng),
        "forces": torch.randn(7, 3, generator=rng),
        "stress": torch.randn(3, 3, 3, generator=rng),
        "empty": torch.zeros(0, 3),
        "count": torch.arange(5),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "magmoms": torch.randn(7, generator=rng),
    }
    host = one_host_copy(values)
    assert copies == [torch.float32, torch.int64, torch.float64]  # one copy per dtype
    assert set(host) == set(values)
    for name, value in values.items():
        assert host[name].shape == tuple(value.shape), name
        assert host[name].dtype == value.numpy().dtype, name
        np.testing.assert_array_equal(host[name], value.numpy(), err_msg=name)


def _count_copies(monkeypatch) -> tuple[list, list]:
    """Records the dtype of every ``torch.cat`` (a join on the device) and ``Tensor.cpu``."""
    from fastchgnet.data import batch

    joins, copies = [], []
    cat, to_host = torch.cat, torch.Tensor.cpu
    monkeypatch.setattr(batch.torch, "cat", lambda ts: joins.append(ts[0].dtype) or cat(ts))
    monkeypatch.setattr(
        torch.Tensor, "cpu", lambda self: copies.append(self.dtype) or to_host(self)
    )
    return joins, copies


def test_joined_copy_is_one_new_buffer_per_dtype_that_goes_to_the_host_as_it_is(monkeypatch):
    from fastchgnet.data.batch import joined_copy, one_host_copy

    rng = torch.Generator().manual_seed(1)
    source = torch.randn(10, 3, generator=rng)
    values = {
        "energy": source[:2, 0],  # a strided view: copied as its values
        "forces": source[:7],
        "count": torch.arange(4),
        "stress": torch.randn(2, 3, 3, generator=rng),
        "empty": torch.zeros(0),
    }
    before = {k: v.clone() for k, v in values.items()}
    joins, copies = _count_copies(monkeypatch)
    owned = joined_copy(values)
    assert joins == [torch.float32, torch.int64]
    assert copies == []
    source.fill_(7.0)  # the copy is its own memory (as the next CUDA graph replay would)
    for name, value in owned.items():
        assert value.shape == values[name].shape
        assert value.dtype == values[name].dtype
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    host = one_host_copy(owned)
    assert joins == [torch.float32, torch.int64]  # no join again
    assert copies == [torch.float32, torch.int64]
    for name, value in before.items():
        np.testing.assert_array_equal(host[name], value.numpy(), err_msg=name)
    out_of_order = {"stress": owned["stress"], "energy": owned["energy"]}
    one_host_copy(out_of_order)  # not consecutive in order: joined first
    assert joins == [torch.float32, torch.int64, torch.float32]
    # consecutive, but a lazily negated view: its values are not the storage's
    flat = torch.arange(6.0)
    negated = one_host_copy({"a": flat[:3], "b": torch._neg_view(flat[3:])})
    np.testing.assert_array_equal(negated["b"], [-3.0, -4.0, -5.0])


def test_host_arrays_copies_off_a_device_once_per_dtype(monkeypatch):
    from fastchgnet.data import batch

    seen = []
    monkeypatch.setattr(batch, "one_host_copy", lambda values: seen.append(list(values)) or {})
    on_cpu = {"a": torch.ones(2), "b": torch.zeros(3, dtype=torch.int64)}
    host = batch.host_arrays(on_cpu)
    assert seen == []  # already on the host: views, no copy
    np.testing.assert_array_equal(host["b"], [0, 0, 0])
    batch.host_arrays({"a": torch.ones(2, device="meta"), "b": torch.ones(1, device="meta")})
    assert seen == [["a", "b"]]
