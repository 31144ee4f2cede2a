"""Exponential moving average (EMA) of a model's weights, for evaluation and saving.

After every optimizer step ``update`` sets shadow = decay * shadow + (1 - decay) * weights for
every floating-point parameter and buffer (integer buffers are copied). ``applied(model)``
swaps the shadow weights in for an evaluation or a save and restores the trained ones after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class WeightEMA:
    """The EMA of ``model``'s state (``decay`` in (0, 1); 0.999 averages ~1000 steps).

    The shadow starts at the model's current weights and lives on the model's device.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, Tensor] = {
            name: value.detach().clone() for name, value in model.state_dict().items()
        }
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after each step): one
        ``_foreach_lerp_`` for the floating-point tensors (a kernel launch per tensor, about
        120, cost host time every step on a GPU), a copy for the integer ones."""
        shadows, values = [], []
        for name, value in model.state_dict().items():
            shadow = self.shadow[name]
            if shadow.is_floating_point():
                shadows.append(shadow)
                values.append(value.detach())
            else:
                shadow.copy_(value)
        if shadows:
            torch._foreach_lerp_(shadows, values, 1.0 - self.decay)
        self.updates += 1

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` holding the averaged weights inside the block, its own after."""
        trained = {name: value.detach().clone() for name, value in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(trained)

    def state_dict(self) -> dict[str, object]:
        """Decay, update count and shadow weights (for checkpoints)."""
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what ``state_dict`` gave."""
        shadow = state["shadow"]
        assert isinstance(shadow, dict)
        for name, value in shadow.items():
            self.shadow[name].copy_(value)
        self.updates = int(state["updates"])  # type: ignore[arg-type]
