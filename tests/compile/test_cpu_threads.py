"""CPU graphs on several threads: the model's gathers and scatter sums take the expanded-index
form (``model.layers.parallel_cpu``), exact to the bit, so inductor's kernels run on every thread
without a single atomic add (issue #14: with atomics the captured step was slower at 2 threads
than at 1)."""

from __future__ import annotations

import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from fastchgnet.compile import CapturedModel
from fastchgnet.compile.capture import CPU_CONSERVATIVE_ACTIVATION_BUDGET, CPU_INDUCTOR_OPTIONS
from fastchgnet.compile.programs import loss_program
from fastchgnet.compile.trace import trace_program
from fastchgnet.model import layers
from fastchgnet.model.layers import gather, scatter_sum
from fastchgnet.model.loss import LossConfig
from tests.compile.conftest import small_model


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("shape", [(50,), (50, 64), (50, 3, 3)])
def test_gather_and_scatter_sum_on_two_threads_equal_the_one_thread_forms_to_the_bit(
    two_threads, shape
):
    torch.manual_seed(0)
    values, index = torch.randn(*shape), torch.randint(0, 50, (3000,))
    rows = values.index_select(0, index)
    summed = torch.zeros_like(values).index_add(0, index, rows)
    assert torch.equal(gather(values, index), rows)
    assert torch.equal(scatter_sum(rows, index, 50), summed)
    # the backward of a gather is the scatter sum, also exact
    leaf = values.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(gather(leaf, index), leaf, rows)
    assert torch.equal(gradient, summed)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("row_copy_min", [0, layers.ROW_COPY_MIN])
def test_gather_and_scatter_sum_differentiate_twice(monkeypatch, row_copy_min, threads):
    # the training step's force loss differentiates the forward's gathers and scatter sums
    # twice (large ones: the _RowGather / _RowScatter pair, with scatter_add on two threads
    # and index_add on one; small: expanded on two threads, index_select / index_add on one)
    monkeypatch.setattr(layers, "ROW_COPY_MIN", row_copy_min)
    torch.manual_seed(0)
    values = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    rows = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 7, (20,))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert torch.autograd.gradgradcheck(lambda v: gather(v, index) ** 2, (values,))
        assert torch.autograd.gradgradcheck(lambda r: scatter_sum(r, index, 7) ** 2, (rows,))
    finally:
        torch.set_num_threads(before)


def test_gather_and_scatter_sum_on_two_threads_take_empty_tables(two_threads):
    # a structure without bond-graph bonds gathers from and sums into zero rows
    empty, index = torch.zeros(0, 64), torch.zeros(0, dtype=torch.long)
    assert gather(empty, index).shape == (0, 64)
    assert scatter_sum(empty, index, 3).equal(torch.zeros(3, 64))


def test_traced_gathers_and_scatter_sums_keep_the_expanded_forms(two_threads, monkeypatch):
    # AOTAutograd would differentiate a traced index_select into index_add, which inductor
    # turns into atomic adds on several threads: captured graphs keep the expanded forms
    from torch.fx.experimental.proxy_tensor import make_fx

    monkeypatch.setattr(layers, "ROW_COPY_MIN", 0)
    values, index = torch.randn(6, 4), torch.tensor([5, 0, 0, 2])

    def summed_rows(v: torch.Tensor) -> torch.Tensor:
        return scatter_sum(gather(v, index), index, 6)

    code = make_fx(summed_rows)(values).code
    assert "index_select" not in code
    assert "gather" in code
    assert "scatter_add" in code
    assert torch.equal(make_fx(summed_rows)(values)(values), summed_rows(values))


def test_gather_on_two_threads_copies_rows_with_index_select(two_threads, monkeypatch):
    # torch.gather with an expanded index reads the index per element: 2.6x slower
    calls = []
    monkeypatch.setattr(torch, "gather", lambda *a, **k: calls.append(a) or 1 / 0)
    values, index = torch.randn(600, 128), torch.randint(0, 600, (3000,))
    assert index.numel() * 128 >= layers.ROW_COPY_MIN
    assert torch.equal(gather(values, index), values[index])
    assert not calls


def test_small_gathers_on_two_threads_read_contiguous_rows(two_threads, monkeypatch):
    # eager torch.gather from a column block of a wider product (a strided view) ran 10-18x
    # slower than from contiguous rows: a quarter of an 8-atom MD force call
    seen = []
    real = torch.gather
    monkeypatch.setattr(
        torch, "gather", lambda v, *a: seen.append(v.is_contiguous()) or real(v, *a)
    )
    wide, index = torch.randn(40, 256), torch.randint(0, 40, (744,))
    block = wide[:, 128:]
    assert not block.is_contiguous()
    assert index.numel() * 128 < layers.ROW_COPY_MIN
    assert torch.equal(gather(block, index), block[index])
    assert seen == [True]


@pytest.mark.slow  # an inductor C++ build of a small training graph: about a minute on 2 cores
def test_captured_training_graph_on_two_threads_has_parallel_kernels_and_no_atomic_add(
    two_threads, batch_and_labels
):
    torch._dynamo.reset()
    batch, labels = batch_and_labels
    captured = CapturedModel(small_model("conservative").train())

    def step() -> torch.Tensor:
        loss, _ = captured.loss(batch, labels)
        loss.backward()
        return loss

    _, codes = run_and_get_code(step)
    code = "\n".join(codes)
    assert len(codes) >= 2, "forward and backward graphs expected"
    assert not re.findall(r"atomic_add\w*\(", code)
    assert "omp parallel" in code


def test_captured_model_compiles_cpu_graphs_with_the_cpu_options(monkeypatch, batch_and_labels):
    seen = []

    def record(fn, **kwargs):
        seen.append(kwargs)
        return fn  # the traced graph, run as it is

    monkeypatch.setattr(torch, "compile", record)
    batch, labels = batch_and_labels
    CapturedModel(small_model("direct").train()).loss(batch, labels)
    assert seen, "CapturedModel did not compile"
    assert seen[0]["options"] == CPU_INDUCTOR_OPTIONS
    assert seen[0]["mode"] is None


@pytest.mark.parametrize(
    ("forces", "grad", "budget"),
    [
        ("conservative", True, CPU_CONSERVATIVE_ACTIVATION_BUDGET),
        ("conservative", False, 1.0),
        ("direct", True, 1.0),
    ],
)
def test_conservative_cpu_training_graphs_compile_with_the_activation_budget(
    monkeypatch, batch_and_labels, forces, grad, budget
):
    import torch._functorch.config as functorch_config

    seen = []

    def record(fn, **kwargs):
        def first_call(*args):
            seen.append(functorch_config.activation_memory_budget)
            return fn(*args)

        return first_call

    monkeypatch.setattr(torch, "compile", record)
    batch, _ = batch_and_labels
    captured = CapturedModel(small_model(forces).train())
    with torch.set_grad_enabled(grad):
        captured.predict(batch)
        captured.predict(batch)  # a replay: compiled already, default settings
    assert seen == [budget, 1.0]
    assert functorch_config.activation_memory_budget == 1.0


@pytest.mark.parametrize("forces", ["direct", "conservative"])
def test_every_scatter_sum_of_a_traced_training_step_has_the_fast_path_layout(
    two_threads, batch_and_labels, forces
):
    """aten's fast expanded-index scatter sum on CPU needs an index of stride 1 along the rows,
    a contiguous source and a contiguous destination; otherwise it takes a generic path, about
    5x slower a call. The direct heads' two column gathers by ``bond_atoms[:, 0]`` (stride 2)
    gave four such scatters in the direct training step's backward."""
    batch, labels = batch_and_labels
    model = small_model(forces).train()
    loss = loss_program(LossConfig(), True, True)

    def step(model, batch, labels):  # the loss and its gradients, as the training step's
        value = loss(model, batch, labels)[0]
        weights = [p for p in model.parameters() if p.requires_grad]
        return (value, *torch.autograd.grad(value, weights, allow_unused=True))

    traced = trace_program(model, step, batch, labels)
    scatters = [n for n in traced.graph.nodes if str(n.target).startswith("aten.scatter_add")]
    assert scatters
    slow = []
    for node in scatters:
        destination, index, source = (node.args[k].meta["val"] for k in (0, 2, 3))
        if not (index.stride(0) == 1 and source.is_contiguous() and destination.is_contiguous()):
            slow.append((node.name, index.stride(), source.stride(), destination.stride()))
    assert not slow, slow
