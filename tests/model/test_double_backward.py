"""Closed-form second derivatives of the layer norm and SiLU (``model.double_backward``): equal
to torch's own to float64 precision, used only where a second derivative follows (a
conservative model with ``create_graph``), and a conservative training gradient equal to the
one through torch's.
"""

from __future__ import annotations

import pytest
import torch

from fastchgnet.model import double_backward, layers
from fastchgnet.model.double_backward import (
    LayerNorm,
    SiLU,
    _LayerNorm,
    _Silu,
    closed_form,
    second_derivative,
)


def _layer_norm(x, weight, bias):
    return _LayerNorm.apply(x, weight, bias, 1e-5)


def test_the_layer_norms_first_and_second_derivatives_pass_gradcheck_in_float64() -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    weight = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    # every cotangent of the backward (of dx, dw and db) takes part in gradgradcheck
    assert torch.autograd.gradcheck(_layer_norm, (x, weight, bias))
    assert torch.autograd.gradgradcheck(_layer_norm, (x, weight, bias))


def test_the_silus_first_and_second_derivatives_pass_gradcheck_in_float64() -> None:
    x = torch.linspace(-6.0, 6.0, 30, dtype=torch.float64).view(5, 6).requires_grad_()
    assert torch.autograd.gradcheck(_Silu.apply, (x,))
    assert torch.autograd.gradgradcheck(_Silu.apply, (x,))


def test_a_force_loss_gradient_equals_torchs_on_strided_rows_and_zero_rows() -> None:
    # the angle update normalises column halves of one GEMM's output (rows of stride 2 * width)
    # and padded batches hold rows of zeros
    torch.manual_seed(1)
    pre = torch.randn(40, 16)
    pre[-3:] = 0.0
    weight, bias = torch.rand(8) + 0.5, torch.randn(8)

    def gradients(norm, act):
        x = pre.clone().requires_grad_()
        w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        core, gate = act(x).chunk(2, dim=1)
        energy = (act(norm(core, w, b)) * torch.sigmoid(norm(gate, w, b))).sum()
        (force,) = torch.autograd.grad(energy, x, create_graph=True)
        (force.square().sum() + energy).backward()
        return force.detach(), x.grad, w.grad, b.grad

    ours = gradients(_layer_norm, _Silu.apply)
    theirs = gradients(
        lambda x, w, b: torch.nn.functional.layer_norm(x, (8,), w, b, 1e-5),
        torch.nn.functional.silu,
    )
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_only_calls_whose_derivative_is_differentiated_again_take_the_closed_forms() -> None:
    norm, act = LayerNorm(4), SiLU()
    x = torch.randn(3, 4, requires_grad=True)
    with second_derivative(True):
        assert type(norm(x).grad_fn).__name__ == "_LayerNormBackward"
        assert type(act(x).grad_fn).__name__ == "_SiluBackward"
        assert closed_form(x)
        with torch.no_grad():
            assert not closed_form(x)
        assert not closed_form(x.double().half())
        with second_derivative(False):
            assert type(norm(x).grad_fn).__name__ == "NativeLayerNormBackward0"
        assert type(norm(x).grad_fn).__name__ == "_LayerNormBackward"
    assert type(norm(x).grad_fn).__name__ == "NativeLayerNormBackward0"
    assert type(act(x).grad_fn).__name__ == "SiluBackward0"


def test_a_conservative_model_takes_the_closed_forms_only_with_create_graph(monkeypatch) -> None:
    from tests.compile.conftest import padded_batch, small_model

    taken: list[str] = []
    for name, function in (("_Silu", _Silu), ("_LayerNorm", _LayerNorm)):
        counted = type(name, (function,), {"apply": _counted(function, name, taken)})
        monkeypatch.setattr(double_backward, name, counted)
    model = small_model("conservative")
    batch, _ = padded_batch()
    model.train()
    model(batch)
    assert set(taken) == {"_Silu", "_LayerNorm"}
    taken.clear()
    model.eval()
    model(batch)
    model(batch, create_graph=False)
    model.train()
    model(batch, create_graph=False)
    assert not taken
    model.eval()
    model(batch, create_graph=True)
    assert set(taken) == {"_Silu", "_LayerNorm"}


def _counted(function: type, name: str, taken: list[str]):
    def apply(*args):
        taken.append(name)
        return function.apply(*args)

    return staticmethod(apply)


def test_a_conservative_training_gradient_equals_the_one_through_torchs_formulas(
    monkeypatch,
) -> None:
    from tests.compile.conftest import padded_batch, small_model
    from tests.model.test_loss import _gradient_after

    model = small_model("conservative", torch.float64)
    model.train()
    batch, labels = padded_batch(torch.float64)
    ours = _gradient_after(model, batch, labels)
    monkeypatch.setattr(LayerNorm, "forward", torch.nn.LayerNorm.forward)
    monkeypatch.setattr(layers, "silu", torch.nn.functional.silu)
    monkeypatch.setattr(double_backward, "silu", torch.nn.functional.silu)
    theirs = _gradient_after(model, batch, labels)
    assert ours.keys() == theirs.keys()
    assert any(isinstance(m, LayerNorm) for m in model.modules())
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("module", [LayerNorm(4), SiLU()])
def test_a_closed_form_module_keeps_torchs_state_dict_and_type(module) -> None:
    base = torch.nn.LayerNorm(4) if isinstance(module, LayerNorm) else torch.nn.SiLU()
    assert isinstance(module, type(base))
    assert module.state_dict().keys() == base.state_dict().keys()


def test_autocast_keeps_torchs_layer_norm_and_silu() -> None:
    # bf16 runs keep torch's casting rules (a layer norm computes in float32 under autocast)
    norm, act = LayerNorm(4), SiLU()
    x = torch.randn(3, 4, requires_grad=True)
    with second_derivative(True), torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(norm(x).grad_fn).__name__ == "NativeLayerNormBackward0"
        assert type(act(x).grad_fn).__name__ == "SiluBackward0"


@pytest.mark.parametrize(
    "used", [(0,), (1,), (2,), (0, 1), (1, 2), (0, 2)], ids=lambda u: "+".join(map(str, u))
)
def test_any_of_dx_dw_db_alone_differentiates_as_torchs(used) -> None:
    # a force loss uses dx alone; the others arrive as None (not zeros) and are skipped
    torch.manual_seed(2)
    x0 = torch.randn(9, 5, dtype=torch.float64)
    w0, b0 = torch.rand(5, dtype=torch.float64) + 0.5, torch.randn(5, dtype=torch.float64)
    upstream = torch.randn(9, 5, dtype=torch.float64)

    def second(norm):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        gy = (upstream * 1.0).requires_grad_()
        firsts = torch.autograd.grad(norm(x, w, b), (x, w, b), gy, create_graph=True)
        loss = sum((firsts[i] * (i + 1)).square().sum() for i in used)
        return torch.autograd.grad(loss, (x, w, gy), allow_unused=True, materialize_grads=True)

    ours = second(_layer_norm)
    theirs = second(lambda x, w, b: torch.nn.functional.layer_norm(x, (5,), w, b, 1e-5))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
