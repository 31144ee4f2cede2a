"""DevicePrefetcher: order and lifetime of side-stream copies, checked on a CPU with a stand-in
stream that records the calls; and the batches' pin_memory."""

from __future__ import annotations

import contextlib
import copy
from types import SimpleNamespace

import torch

from fastchgnet.data.batch import collate, tensors_of
from fastchgnet.data.graph import build_graph
from fastchgnet.data.labels import collate_labels
from fastchgnet.testing import random_crystal
from fastchgnet.train.prefetch import DevicePrefetcher


class FakeStream:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def wait_stream(self, other: FakeStream) -> None:
        self.log.append(("wait", self.name, other.name))


class FakeStreams:
    """Stand-in for CudaStreams: records stream creation, copies issued under a stream,
    waits and record_stream calls."""

    def __init__(self, device: torch.device) -> None:
        self.log: list = []
        self.consumer = FakeStream("consumer", self.log)
        self.recorded: dict[int, list[str]] = {}

    def new_stream(self) -> FakeStream:
        self.log.append(("new_stream",))
        return FakeStream("side", self.log)

    def current_stream(self) -> FakeStream:
        return self.consumer

    @contextlib.contextmanager
    def use(self, stream: FakeStream):
        self.log.append(("enter", stream.name))
        yield stream
        self.log.append(("exit", stream.name))

    def record(self, tensor: torch.Tensor, stream: FakeStream) -> None:
        self.recorded.setdefault(id(tensor), []).append(stream.name)
        self.log.append(("record", stream.name))


def host_batches(n: int):
    """n distinct (GraphBatch, LabelBatch) pairs: batch k holds k + 1 structures."""
    graphs = [build_graph(random_crystal(i, 2 + i % 3)) for i in range(3)]
    pairs = []
    for k in range(n):
        chosen = [graphs[i % len(graphs)] for i in range(k + 1)]
        labels = [SimpleNamespace(energy_per_atom=float(k), forces=None, stress=None, magmoms=None)]
        labels *= len(chosen)
        pairs.append((collate(chosen), collate_labels(labels, [g.n_atoms for g in chosen])))
    return pairs


def test_prefetcher_hands_out_every_batch_once_in_order_the_last_too():
    pairs = host_batches(5)
    streams: list[FakeStreams] = []

    def factory(device):
        streams.append(FakeStreams(device))
        return streams[0]

    out = list(DevicePrefetcher(pairs, "cpu", stream_factory=factory))
    assert [g.n_structures for g, _ in out] == [1, 2, 3, 4, 5]
    assert [float(labels.energy[0]) for _, labels in out] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert len(streams) == 1
    assert list(DevicePrefetcher([], "cpu", stream_factory=factory)) == []


def test_prefetcher_copies_ahead_on_the_side_stream_and_orders_the_consumer_after_it():
    pairs = host_batches(4)
    fake = FakeStreams(torch.device("cpu"))
    log = fake.log
    for k, _ in enumerate(DevicePrefetcher(pairs, "cpu", stream_factory=lambda d: fake)):
        log.append(("yield", k))
    events = [e for e in log if e[0] != "record"]
    copy = [("enter", "side"), ("exit", "side")]
    wait = [("wait", "consumer", "side")]
    expected = [("new_stream",), *copy]  # batch 0 copied before anything is handed out
    for k in range(4):
        # the consumer waits for the copies so far, then batch k+1 is copied (overlapping
        # step k) before batch k is handed out; after the last, nothing more is copied
        expected += wait + (copy if k < 3 else []) + [("yield", k)]
    assert events == expected
    # every record call precedes the hand-out of its batch and names the consumer's stream
    yields = [i for i, e in enumerate(log) if e[0] == "yield"]
    records = [i for i, e in enumerate(log) if e[0] == "record"]
    per_batch = [len(tensors_of(g)) + len(tensors_of(lb)) for g, lb in pairs]
    start = 0
    for k, at in enumerate(yields):
        mine = [i for i in records if start < i < at]
        assert len(mine) == per_batch[k]
        start = at


def test_prefetcher_records_every_handed_out_tensor_on_the_consumer_stream():
    pairs = host_batches(3)
    fake = FakeStreams(torch.device("cpu"))
    for graph, labels in DevicePrefetcher(pairs, "cpu", stream_factory=lambda d: fake):
        for tensor in tensors_of(graph) + tensors_of(labels):
            assert fake.recorded[id(tensor)] == ["consumer"]


def test_prefetcher_without_streams_moves_each_batch_to_the_device():
    pairs = host_batches(3)
    out = list(DevicePrefetcher(pairs, torch.device("cpu")))
    assert [g.n_structures for g, _ in out] == [1, 2, 3]
    assert all(t.device.type == "cpu" for g, lb in out for t in tensors_of(g) + tensors_of(lb))
    assert DevicePrefetcher(pairs, "cpu").streams is None


def test_batches_pin_every_tensor_and_keep_the_rest(monkeypatch):
    graph, labels = host_batches(2)[1]
    pinned_storages = []

    def fake_pin(self, device=None):
        copy = self.clone()
        pinned_storages.append(copy.untyped_storage().data_ptr())
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned_graph, pinned_labels = pin_memory((graph, labels))  # what DataLoader calls
    assert type(pinned_graph) is type(graph)
    assert type(pinned_labels) is type(labels)
    assert pinned_graph.n_short_bonds == graph.n_short_bonds
    # one pinned buffer per dtype: int64 and float of the graph, float and bool of the labels
    assert len(pinned_storages) == 4
    for before, after in ((graph, pinned_graph), (labels, pinned_labels)):
        for old, new in zip(tensors_of(before), tensors_of(after), strict=True):
            assert new.untyped_storage().data_ptr() in pinned_storages
            assert new.dtype == old.dtype
            assert torch.equal(new, old)


def test_a_pinned_batch_goes_to_the_device_in_one_copy_per_dtype(monkeypatch):
    graph, labels = host_batches(2)[1]
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, device=None: self.clone())
    pinned_graph, pinned_labels = graph.pin_memory(), labels.pin_memory()
    copies = []
    to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        out = to(self, *args, **kwargs)
        if out.device != self.device:
            copies.append(self.numel())
        return out

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    moved = pinned_graph.to("meta", dtype=torch.float64)
    moved_labels = pinned_labels.to("meta")
    assert len(copies) == 4  # one a dtype, the whole buffer each time
    real = sum(t.numel() for t in tensors_of(graph) + tensors_of(labels))
    assert real <= sum(copies) <= real + 4 * len(tensors_of(graph) + tensors_of(labels))
    for old, new in zip(tensors_of(graph), tensors_of(moved), strict=True):
        assert new.device.type == "meta"
        assert new.shape == old.shape
        assert new.dtype == (torch.float64 if old.is_floating_point() else old.dtype)
    assert [t.shape for t in tensors_of(moved_labels)] == [t.shape for t in tensors_of(labels)]
    copies.clear()
    graph.to("meta")  # not pinned: one copy a tensor, as before
    assert len(copies) == len(tensors_of(graph))
    copies.clear()
    shallow = copy.copy(pinned_graph)  # keeps the layout, but a field is replaced
    shallow.frac_coords = shallow.frac_coords.clone()
    moved = shallow.to("meta")
    assert len(copies) == len(tensors_of(graph))  # the per-tensor way, never a stale buffer


def test_pinned_fields_start_on_16_byte_boundaries(monkeypatch):
    graph, labels = host_batches(3)[2]
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, device=None: self.clone())
    for batch in (graph.pin_memory(), labels.pin_memory()):
        for tensor in tensors_of(batch):
            assert tensor.storage_offset() * tensor.element_size() % 16 == 0
