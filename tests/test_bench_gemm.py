"""bench/bench_gemm.py: it records the products a call dispatches with their layouts, its
oneDNN side computes the same product as torch's on factors of the recorded strides, and its
summary adds the groups and bounds the step as described."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_gemm import factors, layout, products, record_gemms, summarise

needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN"
)


def test_the_products_of_a_call_are_recorded_with_their_layouts():
    x, w, b = torch.randn(40, 8), torch.randn(6, 8), torch.randn(6)
    y, out = torch.randn(40, 6), torch.empty(8, 6)

    def call() -> None:
        torch.nn.functional.linear(x, w, b)  # addmm: x (40, 8) @ w.t()
        x.t() @ y  # mm with a transposed left factor
        torch.mm(x.t(), y, out=out)  # the form inductor's generated code calls

    seen = record_gemms(call)
    linear = ("addmm", (1,), ((40, 8), (8, 1)), ((8, 6), (1, 8)))
    weight_gradient = ("mm", (), ((8, 40), (1, 8)), ((40, 6), (6, 1)))
    assert seen == {linear: 1, weight_gradient: 2}
    assert layout(linear) == "NN"
    assert layout(weight_gradient) == "TN"
    assert layout(("mm", (), ((40, 8), (16, 1)), ((8, 6), (6, 1)))) == "NN"  # padded rows
    assert layout(("mm", (), ((40, 8), (16, 2)), ((8, 6), (6, 1)))) == "other"


KEYS = [
    ("mm", (), ((50, 16), (16, 1)), ((16, 12), (12, 1))),  # NN
    ("mm", (), ((16, 50), (1, 16)), ((50, 12), (24, 1))),  # TN, a column block on the right
    ("mm", (), ((50, 16), (32, 1)), ((16, 12), (1, 32))),  # padded rows: copied for oneDNN
    ("addmm", (1,), ((50, 16), (16, 1)), ((16, 12), (1, 16))),  # a linear layer
    ("addmm", (2,), ((50, 16), (16, 1)), ((16, 12), (12, 1))),  # a full bias
]


@pytest.mark.parametrize("key", KEYS)
def test_factors_have_the_recorded_shapes_and_strides(key):
    a, b, bias = factors(key)
    assert (tuple(a.shape), a.stride()) == key[2]
    assert (tuple(b.shape), b.stride()) == key[3]
    assert (bias is None) == (key[1] == ())
    assert bias is None or (bias.dim(),) == key[1]


@needs_onednn
@pytest.mark.parametrize("key", KEYS)
def test_both_sides_compute_the_same_product(key):
    mkl, onednn = products(key)
    expected = mkl()
    got = onednn()
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_summary_adds_per_group_and_bounds_the_saving():
    timed = [  # (layout, calls, MKL s, oneDNN s, first call s)
        ("NN", 2, 4.0, 2.0, 1.0),  # oneDNN 2x: saves 2 x 2
        ("NN", 1, 1.0, 2.0, 0.5),  # slower: no saving
        ("TN", 3, 2.0, 4.0, 1.0),  # slower: no saving, 6 s of MKL time
    ]
    groups, best, best_tn_like_nn = summarise(timed)
    assert groups == {"NN": [3, 9.0, 6.0, 1.5], "TN": [3, 6.0, 12.0, 1.0]}
    assert best == pytest.approx(4.0)
    # TN at the NN group's ratio 9 / 6 = 1.5: 6 s become 4 s
    assert best_tn_like_nn == pytest.approx(4.0 + 2.0)
