"""Captured (traced + compiled) model calls equal eager ones; no graph breaks; recompiles counted.

Fast tests compile with the "aot_eager" backend (dynamo, AOTAutograd and our make_fx trace,
without inductor's C++ code generation, minutes on 2 cores); one slow test per mode uses
inductor. Tolerances: aot_eager runs the same aten ops in the same order, so float32 results
agree to a few ulps (1e-6 relative); inductor fuses and reorders reductions, so float32 sums
of ~100 terms of O(1) agree to ~1e-5 relative (1e-4 on weight gradients, which sum over
thousands of edges); float64 agrees to 1e-10.
"""

from __future__ import annotations

import pytest
import torch

from fastchgnet.compile import CapturedModel
from fastchgnet.compile.programs import predict_program
from fastchgnet.compile.trace import batch_inputs, model_state, trace_program
from tests.compile.conftest import padded_batch, small_model

FIELDS = ("energy", "forces", "stress", "magmoms")


def loss_and_grads(captured: CapturedModel, batch, labels):
    captured.model.zero_grad(set_to_none=True)
    loss, prediction = captured.loss(batch, labels)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in captured.model.named_parameters() if p.grad is not None}
    return loss.detach(), prediction, grads


def assert_same(eager, compiled, rtol: float, atol: float) -> None:
    (l0, p0, g0), (l1, p1, g1) = eager, compiled
    torch.testing.assert_close(l1, l0, rtol=rtol, atol=atol)
    for name in FIELDS:
        torch.testing.assert_close(
            getattr(p1, name).detach(), getattr(p0, name).detach(), rtol=rtol, atol=atol
        )
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=10 * rtol, atol=10 * atol, msg=name)


@pytest.mark.parametrize("forces", ["conservative", "direct"])
def test_compiled_loss_and_weight_gradients_equal_eager(forces, batch_and_labels):
    batch, labels = batch_and_labels
    model = small_model(forces).train()
    eager = loss_and_grads(CapturedModel(model, eager=True), batch, labels)
    compiled = loss_and_grads(CapturedModel(model, backend="aot_eager"), batch, labels)
    assert_same(eager, compiled, rtol=1e-5, atol=1e-6)


def test_compiled_float64_equals_eager_to_round_off():
    batch, labels = padded_batch(torch.float64)
    model = small_model("conservative", torch.float64).train()
    eager = loss_and_grads(CapturedModel(model, eager=True), batch, labels)
    compiled = loss_and_grads(CapturedModel(model, backend="aot_eager"), batch, labels)
    assert_same(eager, compiled, rtol=1e-10, atol=1e-12)


def test_trace_keeps_the_weight_gradient_of_a_force_loss(batch_and_labels):
    """Without strip_detach the autograd engine's detached saved outputs would cut it."""
    batch, _ = batch_and_labels
    model = small_model("conservative").train()
    traced = trace_program(model, predict_program(True, True), batch)
    assert not any(n.target is torch.ops.aten.detach.default for n in traced.graph.nodes)
    _, state = model_state(model)
    forces = traced(*state, *batch_inputs(batch))[2]
    (traced_grad,) = torch.autograd.grad(forces.square().sum(), [model.atom_embedding.weight])
    eager_forces = model(batch, create_graph=True).forces
    (eager_grad,) = torch.autograd.grad(eager_forces.square().sum(), [model.atom_embedding.weight])
    torch.testing.assert_close(traced_grad, eager_grad, rtol=1e-5, atol=1e-7)


def test_direct_model_call_has_no_graph_break(batch_and_labels):
    """Direct mode could compile as it is; conservative (autograd.grad inside) is traced."""
    batch, _ = batch_and_labels
    model = small_model("direct").eval()
    program = predict_program(True, True)
    with torch.no_grad():
        explained = torch._dynamo.explain(lambda b: program(model, b, None))(batch)
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize("forces", ["conservative", "direct"])
def test_traced_graph_compiles_as_one_graph_without_break(forces, batch_and_labels):
    batch, _ = batch_and_labels
    model = small_model(forces).eval()
    program = predict_program(True, True)
    with torch.no_grad():
        traced = trace_program(model, program, batch)
        _, state = model_state(model)
        explained = torch._dynamo.explain(traced)(*state, *batch_inputs(batch))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_one_graph_per_shape_and_no_recompile_on_repeat(batch_and_labels):
    batch, labels = batch_and_labels
    model = small_model("direct").train()
    captured = CapturedModel(model, backend="aot_eager")
    for _ in range(3):
        captured.loss(batch, labels)[0].backward()
    other, other_labels = padded_batch(n=3, seed=5)
    captured.loss(other, other_labels)
    assert captured.stats.graphs == 2
    assert captured.stats.recompiles == 0
    assert captured.stats.compile_seconds > 0


@pytest.mark.slow
@pytest.mark.parametrize("forces", ["conservative", "direct"])
def test_inductor_compiled_training_equals_eager(forces, batch_and_labels):
    batch, labels = batch_and_labels
    model = small_model(forces).train()
    eager = loss_and_grads(CapturedModel(model, eager=True), batch, labels)
    compiled = loss_and_grads(CapturedModel(model, backend="inductor"), batch, labels)
    assert_same(eager, compiled, rtol=1e-5, atol=1e-5)


def test_no_scatter_sum_of_a_traced_graph_lands_in_a_concatenation(batch_and_labels):
    """A concatenation of scatter sums is written by inductor as scatters straight into the
    halves of its buffer, where aten's fast scatter (contiguous destination only) gives way
    to a generic one, 4-8x slower. The force program's graph (forward and force backward)
    has none: the layers project by separate GEMMs instead of splitting one."""
    batch, _ = batch_and_labels
    model = small_model("conservative").eval()
    with torch.no_grad():
        traced = trace_program(model, predict_program(True, True), batch)
    scatters = {
        node
        for node in traced.graph.nodes
        if str(node.target).startswith(
            ("aten.scatter_add", "aten.index_add", "aten.scatter_reduce")
        )
    }
    assert scatters
    cats = [n for n in traced.graph.nodes if str(n.target).startswith("aten.cat")]
    fed = [n for n in cats if any(a in scatters for a in n.args[0])]
    assert not fed, fed


def test_the_state_reader_reads_what_torch_lists_and_follows_a_replaced_weight() -> None:
    """The captured graphs' first inputs, read every call from slots found once: the names
    and tensors, in order, of ``named_parameters`` then ``named_buffers`` (a tied weight
    once), and a parameter replaced in its module afterwards is the one read."""
    from fastchgnet.compile.trace import StateReader

    model = small_model("conservative")
    model.register_buffer("extra", torch.zeros(2))
    model.atom_convs[1].mlp_out.weight = model.atom_convs[0].mlp_out.weight  # tied

    def listed() -> list:
        return [*model.named_parameters(), *model.named_buffers()]

    reader = StateReader(model)
    assert reader.names == [name for name, _ in listed()]
    assert [id(t) for t in reader()] == [id(t) for _, t in listed()]
    assert model_state(model)[0] == reader.names
    replacement = torch.nn.Parameter(model.atom_embedding.weight.detach().clone())
    model.atom_embedding.weight = replacement
    assert any(t is replacement for t in reader())
    assert [id(t) for t in reader()] == [id(t) for _, t in listed()]
