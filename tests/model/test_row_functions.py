"""Eager CPU gathers and scatter sums on one thread: large ones keep only their index for the
backward (``model.layers._RowGather`` / ``_RowScatter``), with autograd's values to the bit
(twice differentiable: ``tests/compile/test_cpu_threads.py``)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from fastchgnet.model import layers
from fastchgnet.model.layers import gather, scatter_sum


@pytest.fixture
def one_thread_rows(monkeypatch):
    """One torch thread, and every gather and scatter sum counted as large."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(layers, "ROW_COPY_MIN", 0)
    yield
    torch.set_num_threads(before)


def test_one_thread_rows_equal_index_select_and_index_add_to_the_bit(one_thread_rows):
    torch.manual_seed(0)
    values, index = torch.randn(50, 64), torch.randint(0, 50, (3000,))
    rows = values.index_select(0, index)
    assert torch.equal(gather(values, index), rows)
    assert torch.equal(
        scatter_sum(rows, index, 50), torch.zeros_like(values).index_add(0, index, rows)
    )
    leaf = values.clone().requires_grad_(True)
    upstream = torch.randn(3000, 64)
    (gradient,) = torch.autograd.grad(gather(leaf, index), leaf, upstream)
    assert torch.equal(gradient, torch.zeros_like(values).index_add(0, index, upstream))


def test_a_scatter_sum_does_not_keep_its_summed_messages_for_the_backward(one_thread_rows):
    # autograd's index_add saves its whole source; the conservative training step's peak at
    # batch 16 and one thread fell from 424.1 to 404.5 MiB without those saved messages
    values = torch.randn(6, 4, requires_grad=True)
    messages = values * 2.0
    kept = weakref.ref(messages)
    summed = scatter_sum(messages, torch.tensor([0, 1, 1, 2, 0, 3]), 4)
    del messages
    gc.collect()
    assert kept() is None
    summed.sum().backward()
    assert torch.equal(values.grad, torch.full((6, 4), 2.0))


def test_a_gathers_force_backward_does_not_keep_the_incoming_gradient(one_thread_rows):
    # a force loss differentiates the backward of every gather again: autograd's
    # index_select backward (an index_add) would save the incoming gradient for that
    values = torch.randn(6, 4, requires_grad=True)
    index = torch.tensor([5, 0, 0, 2])
    weights = torch.randn(4, 4, requires_grad=True)
    upstream = weights * 3.0
    kept = weakref.ref(upstream)
    (gradient,) = torch.autograd.grad(gather(values, index), values, upstream, create_graph=True)
    del upstream
    gc.collect()
    assert kept() is None
    gradient.sum().backward()
    assert weights.grad is not None
