"""Whether a call is being traced into one of our captured graphs."""

from __future__ import annotations

import torch
from torch.fx.experimental.proxy_tensor import get_proxy_mode


def tracing() -> bool:
    """True while dynamo or make_fx traces (our captured graphs). Traced graphs keep torch's
    own operators and derivatives: AOTAutograd differentiates the traced aten graph again, so
    eager-only shortcuts stay out of it (``model.layers.gather``, ``model.double_backward``).
    For example, AOTAutograd differentiates a traced ``index_select`` into ``index_add``,
    which inductor turns into atomic adds on several threads (issue #14: the captured step at
    2 threads then lost to eager, 2.25x against 2.61x the reference), and it has no derivative
    for ``aten::silu_backward``."""
    return torch.compiler.is_compiling() or get_proxy_mode() is not None
