"""CPU graphs are compiled with inductor's C++ kernels on one thread (capture.CPU_INDUCTOR_OPTIONS):
no per-element atomic adds in scatter kernels and no OpenMP team per small loop, whatever
torch's thread count (issue #14: the captured step was slower at 2 threads than at 1)."""

from __future__ import annotations

import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from fastchgnet.compile import CapturedModel
from fastchgnet.compile.capture import CPU_CONSERVATIVE_ACTIVATION_BUDGET, CPU_INDUCTOR_OPTIONS
from tests.compile.conftest import small_model


def scatter(x: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return x.index_add(0, index, values).relu()


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow  # an inductor C++ compile: ~40 s on the shared 2 cores
def test_cpu_options_compile_scatter_add_without_atomics_or_omp_at_two_threads(two_threads):
    torch._dynamo.reset()
    x, index, values = torch.zeros(50, 64), torch.randint(0, 50, (2000,)), torch.randn(2000, 64)
    compiled = torch.compile(scatter, fullgraph=True, dynamic=False, options=CPU_INDUCTOR_OPTIONS)
    result, (code, *_) = run_and_get_code(compiled, x, index, values)
    torch.testing.assert_close(result, scatter(x, index, values), rtol=1e-5, atol=1e-5)
    assert not re.findall(r"atomic_add\w*\(", code)
    assert "omp parallel" not in code


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
