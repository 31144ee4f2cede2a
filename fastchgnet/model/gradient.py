"""``scale_gradient``: identity forward, a scaled gradient backward (direct mode's
``head_feature_grad``), as one registered op that survives tracing and compiling."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


@torch.library.custom_op("fastchgnet::scale_gradient", mutates_args=())
def _scale_gradient(x: Tensor, scale: float) -> Tensor:
    return x.clone()


@_scale_gradient.register_fake
def _(x: Tensor, scale: float) -> Tensor:
    return torch.empty_like(x)


def _scale_gradient_backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
    return grad * ctx.scale, None


def _keep_scale(ctx: Any, inputs: tuple[Tensor, float], output: Tensor) -> None:
    ctx.scale = inputs[1]


_scale_gradient.register_autograd(_scale_gradient_backward, setup_context=_keep_scale)


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged in the forward pass, ``scale`` times its gradient in the backward pass;
    (n, d) -> (n, d). One registered op with its own backward, not ``x.detach()``: a traced
    training step drops every detach (``compile.trace.strip_detach``), and the op keeps its
    meaning through make_fx, AOTAutograd and inductor. Without a gradient to scale (inference,
    ``scale`` 1) it is ``x`` itself, so prediction programs never contain it."""
    if scale == 1.0 or not (torch.is_grad_enabled() and x.requires_grad):
        return x
    return _scale_gradient(x, scale)
