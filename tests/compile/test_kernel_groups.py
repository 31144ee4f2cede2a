"""Inductor's CPU kernels built a few to a g++ call (``compile.kernel_groups``): the same
results to the bit, fewer compiler calls, a warm start that builds nothing, and a group that
fails to build falling back to one call per kernel."""

from __future__ import annotations

import logging

import pytest
import torch
from torch._inductor import cpp_builder
from torch._inductor.utils import fresh_cache

from fastchgnet.compile import kernel_groups
from fastchgnet.compile.kernel_groups import _HeldKernel, split


def _function(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Four fused kernels around two matrix products (extern calls)."""
    a = (x.sin() + 1.0) * x.cos()
    b = a @ w
    c = torch.relu(b).sum(1, keepdim=True) * b
    return (c @ w.T).softmax(1), c.exp().mean()


@pytest.fixture(autouse=True)
def inductor_own_builds():
    """Each test starts from inductor's own builds (a captured model, run earlier in this
    process, turns grouping on for the process) and leaves the process as it found it."""
    was_grouped = bool(kernel_groups._installed)
    kernel_groups.ungroup_cpu_kernels()
    yield
    kernel_groups.ungroup_cpu_kernels()
    if was_grouped:
        kernel_groups.group_cpu_kernels()


@pytest.fixture
def compiler_calls(monkeypatch) -> list[str]:
    """The kernel sources g++ builds while the test runs (not the precompiled header, nor the
    CPU feature probe that the first compile in a process builds)."""
    calls: list[str] = []
    run = cpp_builder._run_compile_cmd

    def counted(cmd: str, cwd: str) -> None:
        source = cmd.split()[1]
        if source.endswith(".main.cpp"):  # kernels and groups, not inductor's ISA probe
            calls.append(source)
        run(cmd, cwd)

    monkeypatch.setattr(cpp_builder, "_run_compile_cmd", counted)
    return calls


def _compiled_outputs(grouped: bool) -> tuple[torch.Tensor, ...]:
    torch._dynamo.reset()
    if grouped:
        kernel_groups.group_cpu_kernels()
    try:
        torch.manual_seed(0)
        return torch.compile(_function)(torch.randn(64, 32), torch.randn(32, 32))
    finally:
        kernel_groups.ungroup_cpu_kernels()
        torch._dynamo.reset()


def test_grouped_kernels_equal_inductor_own_build_to_the_bit_in_fewer_compiler_calls(
    compiler_calls, monkeypatch
) -> None:
    monkeypatch.delenv("FASTCHGNET_GROUP_KERNELS", raising=False)
    with torch._inductor.config.patch(compile_threads=2), fresh_cache():
        own = _compiled_outputs(grouped=False)
        alone = len(compiler_calls)
    with torch._inductor.config.patch(compile_threads=2), fresh_cache():
        compiler_calls.clear()
        grouped = _compiled_outputs(grouped=True)
        cold = len(compiler_calls)
        compiler_calls.clear()
        warm = _compiled_outputs(grouped=True)
        assert compiler_calls == []  # a warm start loads the groups, builds nothing
    assert alone >= 3  # the control: inductor builds one library per kernel
    assert cold == 2  # two compile threads: two groups
    for a, b, c in zip(own, grouped, warm, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


def test_a_group_that_fails_to_build_falls_back_to_one_call_per_kernel(
    compiler_calls, monkeypatch, caplog
) -> None:
    monkeypatch.delenv("FASTCHGNET_GROUP_KERNELS", raising=False)
    one_thread = torch._inductor.config.patch(compile_threads=1)
    source = kernel_groups.group_source
    monkeypatch.setattr(
        kernel_groups, "group_source", lambda kernels: source(kernels) + "\n#error broken\n"
    )
    with one_thread, fresh_cache():
        own = _compiled_outputs(grouped=False)
        alone = len(compiler_calls)
    with one_thread, fresh_cache(), caplog.at_level(logging.WARNING, logger="fastchgnet.compile"):
        compiler_calls.clear()
        fallen_back = _compiled_outputs(grouped=True)
    assert "failed to build" in caplog.text
    assert len(compiler_calls) == alone + 1  # the broken group, then each kernel alone
    for a, b in zip(own, fallen_back, strict=True):
        assert torch.equal(a, b)


def test_grouping_is_off_with_the_environment_switch(monkeypatch) -> None:
    monkeypatch.setenv("FASTCHGNET_GROUP_KERNELS", "0")
    original = torch._inductor.async_compile.AsyncCompile.cpp_pybinding
    kernel_groups.group_cpu_kernels()
    assert torch._inductor.async_compile.AsyncCompile.cpp_pybinding is original


def test_split_keeps_order_covers_every_kernel_and_balances_source_length() -> None:
    kernels = [_HeldKernel([], "x" * n) for n in (50, 10, 10, 30, 40, 60, 5, 5)]
    groups = split(kernels, 3)
    assert [k for g in groups for k in g] == kernels
    assert len(groups) == 3
    sizes = [sum(len(k.source) for k in g) for g in groups]
    assert max(sizes) <= 2 * sum(sizes) / 3
    assert split(kernels, 3) == groups  # the same split again: cache keys hold still
    assert split(kernels, 1) == [kernels]
    assert len(split(kernels[:2], 8)) == 2


def test_only_plain_kernels_are_held_for_a_group() -> None:
    prefix = "\n#include <torch/csrc/inductor/cpp_prefix.h>\n"
    entry = 'extern "C"  void  kernel(const float* in_ptr0, float* out_ptr0)\n{ }\n'
    assert _HeldKernel(["const float*", "float*"], prefix + entry).groupable()
    template = prefix + "#include <c10/util/Unroll.h>\n" + entry  # max-autotune's GEMMs
    assert not _HeldKernel(["const float*", "float*"], template).groupable()
    assert not _HeldKernel(["const float*", "float*"], prefix + entry + entry).groupable()
    assert not _HeldKernel(["const float*", "float*"], entry).groupable()


def test_an_eager_run_does_not_import_inductor_for_the_grouping() -> None:
    """The capture module (imported by every training run, eager ones too) leaves inductor's
    build modules unimported until a graph is built: importing them costs ~1.4 s."""
    import subprocess
    import sys

    check = (
        "import sys, fastchgnet.compile.capture, fastchgnet.train.step; "
        "print('torch._inductor.codecache' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "False"


class _FakeModule:
    """A built group: ``kernel_<i>`` returns (group's build number, i, args)."""

    def __init__(self, build: int, size: int):
        for index in range(size):
            setattr(self, f"kernel_{index}", lambda *a, i=index, b=build: (b, i, a))


def test_wait_starts_the_group_builds_and_the_first_call_waits_for_its_group(
    monkeypatch,
) -> None:
    """The module's ``wait`` returns without waiting for g++ (a training graph's backward is
    generated while its forward kernels build); a kernel's first call waits for its group
    only, and puts the built kernels of that group in the module's globals."""
    waited: list[int] = []

    def load_async(source: str, device: str, submit_fn=None):
        build = source.count('{"kernel_')  # kernels in this group (their method entries)

        def load() -> _FakeModule:
            waited.append(build)
            return _FakeModule(len(waited), build)

        return load

    monkeypatch.setattr(kernel_groups._GroupCache, "load_async", load_async)
    monkeypatch.setattr(kernel_groups.inductor_async, "get_compile_threads", lambda: 2)
    held = [(f"k{n}", _HeldKernel([], "x" * 10)) for n in range(4)]
    scope = dict(held)
    kernel_groups._build_groups(held, scope)
    assert waited == []  # nothing waited for at the module's wait
    assert all(scope[name] is kernel for name, kernel in held)
    assert scope["k3"](7) == (1, 1, (7,))  # the second group's second kernel: one wait
    assert waited == [2]
    assert scope["k3"] is not held[3][1]  # its group's kernels now run directly
    assert scope["k2"] is not held[2][1]
    assert scope["k0"] is held[0][1]  # the other group is still building
    assert scope["k0"]() == (2, 0, ())
    assert waited == [2, 2]
    assert held[3][1](8) == (1, 1, (8,))  # a held reference runs the built kernel too
    assert waited == [2, 2]


def test_a_deferred_group_that_fails_builds_each_kernel_alone(monkeypatch, caplog) -> None:
    """A group whose build fails gives each of its kernels inductor's own build, all started
    on the compile pool before any is waited for; the other group is not touched."""
    events: list[str] = []

    def load_async(source: str, device: str, submit_fn=None):
        def load():
            raise RuntimeError("g++ failed")

        return load

    def load_pybinding_async(argtypes, source: str, submit_fn=None):
        assert submit_fn is not None  # on the pool
        events.append(f"start {source[0]}")

        def load():
            events.append(f"wait {source[0]}")
            return lambda *a: ("alone", source)

        return load

    monkeypatch.setattr(kernel_groups._GroupCache, "load_async", load_async)
    monkeypatch.setattr(
        kernel_groups.CppPythonBindingsCodeCache, "load_pybinding_async", load_pybinding_async
    )
    monkeypatch.setattr(kernel_groups.inductor_async, "get_compile_threads", lambda: 2)
    held = [(name, _HeldKernel([], name * 10)) for name in "abcd"]
    scope = dict(held)
    with caplog.at_level(logging.WARNING, logger="fastchgnet.compile"):
        kernel_groups._build_groups(held, scope)
        assert events == []
        assert scope["a"]() == ("alone", "a" * 10)
    assert "failed to build" in caplog.text
    assert events == ["start a", "start b", "wait a", "wait b"]  # its group: a and b
    assert scope["a"] is not held[0][1]
    assert scope["b"]() == ("alone", "b" * 10)
    assert scope["c"] is held[2][1]  # the other group is still pending
    assert scope["d"]() == ("alone", "d" * 10)
    assert events[4:] == ["start c", "start d", "wait c", "wait d"]


@pytest.mark.slow
def test_the_header_child_builds_the_prefix_header_the_group_builds_use(tmp_path) -> None:
    """``start_warm_headers(kernel_groups=True)`` precompiles, in a child process, the very
    header a kernel group's build then finds ready (no header build left for it); the
    control, a fresh header folder, builds one."""
    import subprocess
    import sys

    script = """
import json, sys
from torch._inductor import codecache, cpp_builder
from fastchgnet.compile import kernel_groups
from fastchgnet.compile.kernel_groups import warm_prefix_header
from fastchgnet.compile.package_build import finish_warm_headers, start_warm_headers
assert finish_warm_headers(start_warm_headers(None, kernel_groups=True)) is True
commands = []
run = cpp_builder._run_compile_cmd
cpp_builder._run_compile_cmd = lambda cmd, cwd: (commands.append(cmd), run(cmd, cwd))[1]
warm_prefix_header()
after_child = sum(".gch" in cmd for cmd in commands)
fresh = sys.argv[1]
codecache._precompile_header.cache_clear()  # inductor keeps each header's path per process
kernel_groups._GroupCache.cache_clear()  # and each source's loader
warm_prefix_header([fresh, fresh + "/locks"])
print(json.dumps([after_child, sum(".gch" in cmd for cmd in commands) - after_child]))
"""
    (tmp_path / "tmp").mkdir()
    env = dict(
        __import__("os").environ,
        TMPDIR=str(tmp_path / "tmp"),
        TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
        FASTCHGNET_WARM_HEADERS="1",
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "fresh")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "[0, 1]"


def test_a_trace_starts_the_header_child_unless_this_process_has_the_header(monkeypatch) -> None:
    from torch._inductor import codecache

    import fastchgnet.compile.package_build as package_build

    started: list[bool] = []

    def start(options, **kw):
        started.append(kw["kernel_groups"])

    monkeypatch.setattr(package_build, "start_warm_headers", start)
    monkeypatch.setattr(codecache, "_precompile_header", functools_cache_stub(0))
    assert kernel_groups.while_header_builds(lambda: "graph")() == "graph"
    assert started == [True]
    monkeypatch.setattr(codecache, "_precompile_header", functools_cache_stub(1))
    assert kernel_groups.while_header_builds(lambda: "graph")() == "graph"
    assert started == [True]  # inductor here has found or built a header: no child


def functools_cache_stub(size: int):
    """A stand-in for inductor's cached ``_precompile_header`` holding ``size`` entries."""
    from types import SimpleNamespace

    stub = lambda *args, **kwargs: None  # noqa: E731
    stub.cache_info = lambda: SimpleNamespace(currsize=size)
    return stub
