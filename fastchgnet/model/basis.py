"""Basis expansions: smooth radial Bessel functions for lengths, Fourier series for angles.

Both run on the whole batch at once (the paper's "parallel computation of basis").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def polynomial_envelope(x: Tensor, p: int) -> Tensor:
    """Smooth cutoff 1 + a x^p + b x^(p+1) + c x^(p+2), zero for x >= 1 (factored, eq. 13).

    Args:
        x: (...) distances divided by the cutoff.
        p: envelope order (CHGNet's ``cutoff_coeff``); value, first and second derivative
            vanish at x = 1.

    Returns:
        (...) envelope values in [0, 1].
    """
    a = -(p + 1) * (p + 2) / 2
    b = p * (p + 2)
    c = -p * (p + 1) / 2
    value = 1 + x.pow(p) * (a + x * (b + c * x))
    return torch.where(x < 1, value, torch.zeros_like(x))


class RadialBessel(nn.Module):
    """sqrt(2/rc) sin(f_k r / rc) / r times a polynomial envelope; f_k = k pi, learnable.

    Input lengths in Å, shape (n,); output (n, num_radial).
    """

    def __init__(self, num_radial: int, cutoff: float, envelope_order: int, learnable: bool):
        super().__init__()
        self.cutoff = float(cutoff)
        self.envelope_order = int(envelope_order)
        frequencies = math.pi * torch.arange(1, num_radial + 1, dtype=torch.float32)
        if learnable:
            self.frequencies = nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)

    def forward(self, length: Tensor) -> Tensor:
        """(n,) lengths, Å -> (n, num_radial) basis values."""
        x = (length / self.cutoff).unsqueeze(1)
        scale = math.sqrt(2.0 / self.cutoff) * polynomial_envelope(x, self.envelope_order)
        return torch.sin(self.frequencies * x) * (scale / length.unsqueeze(1))


class FourierBasis(nn.Module):
    """[1/sqrt(2), sin(f_k t), cos(f_k t)] / sqrt(pi) of an angle t; f_k = k, learnable.

    Input angles in radians, shape (n,); output (n, 1 + 2 * order).
    """

    def __init__(self, order: int, learnable: bool):
        super().__init__()
        frequencies = torch.arange(1, order + 1, dtype=torch.float32)
        if learnable:
            self.frequencies = nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)

    def forward(self, angle: Tensor) -> Tensor:
        """(n,) angles, rad -> (n, 1 + 2 * order)."""
        phase = angle.unsqueeze(1) * self.frequencies
        constant = torch.full_like(angle, 1 / math.sqrt(2)).unsqueeze(1)
        return torch.cat([constant, torch.sin(phase), torch.cos(phase)], dim=1) / math.sqrt(math.pi)


def angle_between(unit_a: Tensor, unit_b: Tensor) -> Tensor:
    """Angle (rad) between unit vectors, shape (n, 3) each -> (n,).

    The cosine is scaled by (1 - 1e-6) before acos, as CHGNet does, so the gradient stays
    finite at 0 and pi.
    """
    cosine = (unit_a * unit_b).sum(dim=1) * (1 - 1e-6)
    return torch.acos(cosine)
