"""LayerNorm and SiLU with closed-form second derivatives, for conservative training.

A conservative training step differentiates twice: forces are the gradient of the energy with
``create_graph=True``, and the loss on those forces is differentiated again for the weights.
torch differentiates its layer norm's backward in about 40 passes over each (n, width) tensor
(``NativeLayerNormBackwardBackward0``), and builds a SiLU's backward from five operators
(``infinitely_differentiable_silu_backward``) that it then differentiates one by one. In an
eager conservative step at batch 16 (387 atoms, 2 threads) those took 67 and about 68 of
318 ms. Here the forward and the first derivative are torch's fused kernels, and the second
derivative is written out (derivations in ``_LayerNormGrad.backward`` and
``_SiluGrad``): that step took 270.5 ms against 317.0 ms through torch's formulas
(medians of 36 steps, interleaved in one process), and its peak memory fell from
393 to 271 MiB (``bench/bench_train_step.py --no-compile``).

Only calls inside ``second_derivative(True)`` (``FastCHGNet`` with ``create_graph``) take these
paths, with grad enabled, without autocast and not being traced (``closed_form``). Direct
training, evaluation, inference, MD and relaxation (no second derivative) keep torch's
functions and their per-call cost, and so do bf16 runs and traced graphs (``compile.trace``):
AOTAutograd differentiates their aten operators with its own formulas, and inductor fuses them.
The written-out second derivatives are not differentiated again (a third derivative raises).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from fastchgnet.model.tracing import tracing


class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` over the last dimension, affine, with a closed-form second
    derivative where ``closed_form`` (see the module docstring). (n, width) -> (n, width); the same
    parameters and state-dict keys as ``torch.nn.LayerNorm``."""

    def forward(self, x: Tensor) -> Tensor:
        """(n, width) -> (n, width), normalised per row, then scaled and shifted."""
        if (
            closed_form(x)
            and x.dim() == 2
            and len(self.normalized_shape) == 1
            and self.weight is not None
            and self.bias is not None
        ):
            return _LayerNorm.apply(x, self.weight, self.bias, self.eps)
        return super().forward(x)


_state = threading.local()


@contextlib.contextmanager
def second_derivative(taken: bool) -> Iterator[None]:
    """Within, with ``taken``, this thread's ``LayerNorm`` and ``silu`` calls take the closed
    forms: the caller will differentiate their derivative again (``FastCHGNet`` with
    ``create_graph``: a conservative training step)."""
    before = getattr(_state, "taken", False)
    _state.taken = taken
    try:
        yield
    finally:
        _state.taken = before


def closed_form(x: Tensor) -> bool:
    """Whether a call on ``x`` takes the closed forms now: inside ``second_derivative(True)``,
    grad enabled, ``x`` in float32 or float64 and no autocast on its device (bf16 runs keep
    torch's casting rules; a half-precision layer norm's statistics are float32), and not
    traced (a captured graph keeps torch's operators, whose derivatives AOTAutograd knows; it
    has none for ``aten::silu_backward``). The thread's flag is read first: it is the cheap
    test that fails on every call outside a conservative training step."""
    return (
        getattr(_state, "taken", False)
        and torch.is_grad_enabled()
        and x.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled(x.device.type)
        and not tracing()
    )


class _LayerNorm(torch.autograd.Function):
    """y = (x - mean) * rstd * weight + bias per row; its backward is ``_LayerNormGrad``
    when a graph is being built (``create_graph=True``), else torch's fused backward."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        y, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, gy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():
            mask = [True, *ctx.needs_input_grad[1:3]]  # no dw, db for frozen weights
            dx, dw, db = _LayerNormGrad.apply(gy, x, weight, bias, mean, rstd, mask)
        else:
            dx, dw, db = torch.ops.aten.native_layer_norm_backward(
                gy, x, (x.shape[-1],), mean, rstd, weight, bias, list(ctx.needs_input_grad[:3])
            )
        return dx, dw, db, None


class _LayerNormGrad(torch.autograd.Function):
    """(dx, dw, db) of a layer norm from the output's gradient ``gy``, with a closed-form
    backward (used once: third derivatives are not needed)."""

    @staticmethod
    def forward(
        ctx,
        gy: Tensor,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        mean: Tensor,
        rstd: Tensor,
        mask: list[bool],
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        ctx.set_materialize_grads(False)  # an unused dx, dw or db arrives as None
        ctx.save_for_backward(gy, x, weight, mean, rstd)
        return torch.ops.aten.native_layer_norm_backward(
            gy, x, (x.shape[-1],), mean, rstd, weight, bias, mask
        )

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, u: Tensor | None, uw: Tensor | None, ub: Tensor | None):
        """Per row, with xh = (x - mean) * r (r = rstd, D = width), g = gy * w and the
        projection P = I - 11^T / D - xh xh^T / D (symmetric):
        dx = r P g, dw = sum_rows gy * xh, db = sum_rows gy. Given the cotangents u, uw, ub
        of dx, dw, db (None where unused: a force loss leaves uw and ub None), with
        L = r u^T P g:
        - dL/dg = r P u, so d/dgy = w * r P u (+ uw * xh + ub) and d/dw = sum_rows gy * r P u;
        - dL/dxh = -r (mean(g xh) u + mean(u xh) g) (+ uw * gy from dw), call it G;
        - dL/dr = u^T P g = D (mean(u g) - mean(u) mean(g) - mean(u xh) mean(g xh)) =: D s;
        - xh's Jacobian in x is r P and r's is -r^2 xh^T / D, so
          d/dx = r P G - r^2 s xh."""
        gy, x, weight, mean, rstd = ctx.saved_tensors
        if u is None and uw is None:  # db = sum_rows gy alone
            return (None if ub is None else ub.expand_as(gy)), None, None, None, None, None, None
        xh = (x - mean) * rstd
        grad_gy = grad_w = G = s = None
        if u is not None:
            g = gy * weight
            g_mean, gx_mean = g.mean(-1, keepdim=True), _row_mean_of_product(g, xh)
            u_mean, ux_mean = u.mean(-1, keepdim=True), _row_mean_of_product(u, xh)
            pu = _times_r_p(u, x, mean, rstd)
            grad_gy = pu * weight
            grad_w = (gy * pu).sum(0) if ctx.needs_input_grad[2] else None
            G = torch.addcmul(u * gx_mean, g, ux_mean).mul_(-rstd)
            s = _row_mean_of_product(u, g) - u_mean * g_mean - ux_mean * gx_mean
        if uw is not None:
            grad_gy = uw * xh if grad_gy is None else torch.addcmul(grad_gy, uw, xh)
            G = uw * gy if G is None else torch.addcmul(G, uw, gy)
        if ub is not None:
            grad_gy = grad_gy + ub
        grad_x = _times_r_p(G, x, mean, rstd)
        if s is not None:
            grad_x = torch.addcmul(grad_x, xh, rstd.square() * s, value=-1)
        return grad_gy, grad_x, grad_w, None, None, None, None


def _row_mean_of_product(a: Tensor, b: Tensor) -> Tensor:
    """(n, D), (n, D) -> (n, 1): the mean over each row of a * b (one batched GEMM)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1, 1) / a.shape[-1]


def _times_r_p(v: Tensor, x: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    """(n, D) -> (n, D): r P v per row (r = rstd, P as in ``_LayerNormGrad.backward``),
    which is torch's fused layer-norm input gradient without a weight."""
    return torch.ops.aten.native_layer_norm_backward(
        v, x, (x.shape[-1],), mean, rstd, None, None, [True, False, False]
    )[0]


class SiLU(nn.SiLU):
    """``torch.nn.SiLU`` with a closed-form second derivative where ``closed_form`` (see the
    module docstring). Any shape -> the same shape."""

    def forward(self, x: Tensor) -> Tensor:
        """x * sigmoid(x), elementwise."""
        return silu(x)


def silu(x: Tensor) -> Tensor:
    """x * sigmoid(x), elementwise, any shape; with the closed-form second derivative
    (``_SiluGrad``) where ``closed_form``."""
    if closed_form(x):
        return _Silu.apply(x)
    return nn.functional.silu(x)


class _Silu(torch.autograd.Function):
    """silu(x); its backward is ``_SiluGrad`` when a graph is being built."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return nn.functional.silu(x)

    @staticmethod
    def backward(ctx, gy: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _SiluGrad.apply(gy, x)
        return torch.ops.aten.silu_backward(gy, x)


class _SiluGrad(torch.autograd.Function):
    """gy * silu'(x), with silu'(x) = s (1 + x (1 - s)), s = sigmoid(x); its backward uses
    silu''(x) = s (1 - s) (2 + x (1 - 2 s)) (used once)."""

    @staticmethod
    def forward(ctx, gy: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(gy, x)
        return torch.ops.aten.silu_backward(gy, x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, u: Tensor) -> tuple[Tensor, Tensor]:
        gy, x = ctx.saved_tensors
        s = torch.sigmoid(x)
        # u gy s (1 - s) (2 + x (1 - 2 s))
        second = torch.ops.aten.sigmoid_backward(u * gy, s)
        second *= torch.rsub(s, 1, alpha=2).mul_(x).add_(2)
        return torch.ops.aten.silu_backward(u, x), second
