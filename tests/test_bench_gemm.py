"""bench/bench_gemm.py: it records the products a call dispatches, and its oneDNN side computes
the same product as torch's, so that its timings compare like with like."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_gemm import products, record_gemms

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN"
)


def test_the_products_of_a_call_are_recorded_with_their_layouts():
    x, w, b = torch.randn(40, 8), torch.randn(6, 8), torch.randn(6)
    y = torch.randn(40, 6)

    def call() -> None:
        torch.nn.functional.linear(x, w, b)  # addmm: x (40, 8) @ w.t()
        x.t() @ y  # mm with a transposed left factor, twice
        x.t() @ y

    seen = record_gemms(call)
    assert seen[("addmm", (1,), ((40, 8), (8, 1)), ((8, 6), (1, 8)))] == 1
    assert seen[("mm", (), ((8, 40), (1, 8)), ((40, 6), (6, 1)))] == 2
    assert sum(seen.values()) == 3


@pytest.mark.parametrize(
    "key",
    [
        ("mm", (), ((50, 16), (16, 1)), ((16, 12), (12, 1))),  # NN
        ("mm", (), ((16, 50), (1, 16)), ((50, 12), (24, 1))),  # TN, a column block on the right
        ("mm", (), ((50, 16), (32, 1)), ((16, 12), (1, 32))),  # padded rows: copied for oneDNN
        ("addmm", (1,), ((50, 16), (16, 1)), ((16, 12), (1, 16))),  # a linear layer
        ("addmm", (2,), ((50, 16), (16, 1)), ((16, 12), (12, 1))),  # a full bias
    ],
)
def test_both_sides_compute_the_same_product(key):
    mkl, onednn = products(key)
    expected = mkl()
    got = onednn()
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
