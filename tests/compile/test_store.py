"""The on-disk store of programs compiled ahead of time: keys, location, verification, and
what a first call would cost. (A real build and a warm start that compiles nothing:
tests/compile/test_potential.py, slow.)"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.compile.store import CompiledStore, default_root, program_key
from fastchgnet.data.graph import build_graph
from fastchgnet.data.random_crystals import varied_structures

from .conftest import small_model


def graphs(n: int = 2, seed: int = 3):
    return [build_graph(s) for s in varied_structures(n, seed=seed, max_atoms=6)]


def test_the_key_changes_with_config_program_and_shape() -> None:
    model = small_model("conservative")
    other = small_model("direct")
    inputs = [torch.zeros(3, 2), torch.zeros(5, dtype=torch.long)]
    key = program_key(model.config, "predict", inputs, 4)
    assert key == program_key(model.config, "predict", [t.clone() for t in inputs], 4)
    assert key != program_key(other.config, "predict", inputs, 4)
    assert key != program_key(model.config, "predict(stress)", inputs, 4)
    assert key != program_key(model.config, "predict", [torch.zeros(4, 2), inputs[1]], 4)
    assert key != program_key(model.config, "predict", [inputs[0].double(), inputs[1]], 4)
    assert key != program_key(model.config, "predict", inputs, 5)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert key != program_key(model.config, "predict", inputs, 4)
    finally:
        torch.set_num_threads(threads)


def test_the_store_lives_where_the_environment_says(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FASTCHGNET_CACHE_DIR", str(tmp_path))
    assert default_root() == tmp_path / "compiled"
    monkeypatch.setenv("FASTCHGNET_COMPILE_STORE", "0")
    assert default_root() is None
    assert CompiledPotential(small_model("direct")).store is None


def test_a_damaged_package_is_reported_removed_and_not_used(tmp_path, caplog) -> None:
    store = CompiledStore(tmp_path)
    key = "k" * 64
    store.package_path(key).write_bytes(b"not a package")
    record = {"version": 1, "key": key, "sha256": "0" * 64, "compile_seconds": 40.0}
    store.record_path(key).write_text(json.dumps(record))
    assert store.has(key)
    with caplog.at_level(logging.WARNING, logger="fastchgnet.compile"):
        assert store.load(key) is None
    assert "checksum mismatch" in caplog.text
    assert str(store.package_path(key)) in caplog.text
    assert not store.has(key)
    assert store.loads == 0


def test_expected_compile_seconds_knows_the_store_and_this_process(tmp_path) -> None:
    store = CompiledStore(tmp_path)
    potential = CompiledPotential(small_model("conservative"), store=store)
    found = graphs()
    assert potential.expected_compile_seconds(found, stress=False, cold_estimate=55.0) == 55.0
    captured = potential.captured[False, False]
    # a package on disk for this shape: a warm start costs about the load
    from fastchgnet.compile.potential import contiguous
    from fastchgnet.data.padding import collate_padded

    batch, _ = collate_padded(found, potential.capacity_for(found), None, torch.float32)
    with torch.no_grad():
        key = captured.store_key("predict", contiguous(batch), None)
    assert key is not None
    store.package_path(key).write_bytes(b"x")
    store.record_path(key).write_text("{}")
    assert potential.expected_compile_seconds(found, stress=False, cold_estimate=55.0) == 1.0
    # the stress program is another key
    assert potential.expected_compile_seconds(found, stress=True, cold_estimate=55.0) == 55.0


WARM_UP = """
import sys
from fastchgnet.compile.capture import CPU_PACKAGE_OPTIONS
from fastchgnet.compile.package_build import finish_warm_headers, start_warm_headers
print(finish_warm_headers(start_warm_headers(CPU_PACKAGE_OPTIONS), timeout=600))
"""

BUILD = """
from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.data.graph import build_graph
from fastchgnet.data.random_crystals import varied_structures
from tests.compile.conftest import small_model
potential = CompiledPotential(small_model("conservative"))
potential.predict_graphs([build_graph(varied_structures(1, seed=3, max_atoms=6)[0])], stress=False)
print(potential.store.builds)
"""


@pytest.mark.slow
def test_the_header_warm_up_builds_the_headers_a_build_then_uses(tmp_path) -> None:
    """The child started by ``CompiledStore.build`` precompiles exactly the C++ headers that
    the build itself needs: a build after the warm-up (with its own warm-up off) adds none."""
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "tmp").mkdir()
    env = dict(
        os.environ,
        TMPDIR=str(tmp_path / "tmp"),
        TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
        FASTCHGNET_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONPATH=str(root),
        PYTHONWARNINGS="ignore",
    )

    def run(code: str, **extra: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env | extra, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip().splitlines()[-1]

    def headers() -> set[str]:
        return {p.name for p in (tmp_path / "tmp").rglob("precompiled_headers/*.gch")}

    assert run(WARM_UP) == "True"
    warmed = headers()
    assert len(warmed) == 2  # the wrapper's header and the kernels' header
    assert run(BUILD, FASTCHGNET_WARM_HEADERS="0") == "1"
    assert headers() == warmed


class FakeBuilder:
    """Stands in for inductor's CppBuilder: ``build`` runs its command through
    ``_run_compile_cmd``, as the real one does."""

    _use_relative_path = False

    def __init__(self, name: str, output_dir: str, log: list, link: bool = False) -> None:
        self._name, self._output_dir, self.log, self.link = name, output_dir, log, link

    def get_command_line(self) -> str:
        return self._name

    def get_target_file_path(self) -> str:
        # the objects are ".o"; the link is named as the wrapper, with a ".so" target
        return os.path.join(self._output_dir, self._name + (".so" if self.link else ".o"))

    def build(self) -> None:
        from torch._inductor import cpp_builder

        cpp_builder._run_compile_cmd(self._name, self._output_dir)


def test_wrapper_and_kernel_objects_compile_side_by_side_and_the_link_waits(
    monkeypatch, tmp_path
) -> None:
    import threading
    import time

    from torch._inductor import cpp_builder

    from fastchgnet.compile.package_build import parallel_object_builds

    log: list = []
    wrapper_started = threading.Event()

    def compile_cmd(command: str, cwd: str) -> None:
        log.append(("start", command))
        if command.endswith(".wrapper"):
            wrapper_started.set()
            time.sleep(0.3)
        else:
            assert wrapper_started.wait(5)
        if command == "bad.wrapper":
            raise RuntimeError("wrapper failed")
        log.append(("end", command))

    monkeypatch.setattr(cpp_builder, "_run_compile_cmd", compile_cmd)
    monkeypatch.setattr(cpp_builder, "CppBuilder", FakeBuilder)
    monkeypatch.setenv("FASTCHGNET_PARALLEL_OBJECTS", "1")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with parallel_object_builds():
        for name in ("a.wrapper", "a.kernel"):
            cpp_builder.CppBuilder(name, str(tmp_path), log).build()
        cpp_builder.CppBuilder("a.wrapper", str(tmp_path), log, link=True).build()
        assert len(log) == 6  # the link has run when its build returns
    # the kernel starts before the wrapper ends; the link starts after both
    assert log.index(("start", "a.kernel")) < log.index(("end", "a.wrapper"))
    assert log[-2:] == [("start", "a.wrapper"), ("end", "a.wrapper")]
    wrapper_started.clear()

    def failing_wrapper_then_kernel() -> None:
        with parallel_object_builds():
            cpp_builder.CppBuilder("bad.wrapper", str(tmp_path), log).build()
            cpp_builder.CppBuilder("bad.kernel", str(tmp_path), log).build()

    with pytest.raises(RuntimeError, match="wrapper failed"):
        failing_wrapper_then_kernel()
    assert cpp_builder.CppBuilder.build is FakeBuilder.build  # put back


def _wrapper_source(package: Path) -> str:
    import zipfile

    with zipfile.ZipFile(package) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".wrapper.cpp")]
        return archive.read(name).decode()


@pytest.mark.slow
@pytest.mark.parametrize("keep_checks", [False, True])
def test_packages_are_built_without_inductors_per_input_checks(
    monkeypatch, tmp_path, keep_checks
) -> None:
    """A store build leaves out inductor's per-input check functions (two thirds of the MD
    graph's wrapper source, never run without AOTI_RUNTIME_CHECK_INPUTS) and the program still
    computes what the graph does; FASTCHGNET_AOTI_INPUT_CHECKS=1 keeps them."""
    from torch.fx.experimental.proxy_tensor import make_fx

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("FASTCHGNET_WARM_HEADERS", "0")
    monkeypatch.setenv("FASTCHGNET_AOTI_INPUT_CHECKS", "1" if keep_checks else "0")

    def program(weight: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return ((x @ weight).relu().sum(0), x.sin())

    inputs = [torch.randn(4, 3), torch.randn(5, 4)]
    graph = make_fx(program)(*inputs)
    store = CompiledStore(tmp_path / "store")
    runner = store.build("k" * 64, graph, inputs, {"program": "test"})
    source = _wrapper_source(store.package_path("k" * 64))
    assert ("check_input_1(" in source) == keep_checks
    assert "__check_inputs_outputs(input_handles, output_handles);" in source
    weight, x = torch.randn(4, 3), torch.randn(5, 4)
    for got, want in zip(runner(weight, x), program(weight, x), strict=True):
        torch.testing.assert_close(got, want)


def test_inductor_caches_in_our_folder_unless_the_user_chose_one(monkeypatch, tmp_path) -> None:
    """``import torch._dynamo`` writes inductor's default (under /tmp) into
    TORCHINDUCTOR_CACHE_DIR; our folder replaces that default, never a folder the user set."""
    import os

    import torch._dynamo  # noqa: F401 - sets the variable to inductor's default when unset
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    from fastchgnet.compile.store import use_persistent_inductor_cache

    monkeypatch.setenv("FASTCHGNET_CACHE_DIR", str(tmp_path / "ours"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    use_persistent_inductor_cache()
    assert cache_dir() == str(tmp_path / "ours" / "inductor")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    use_persistent_inductor_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "ours" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "theirs"))
    use_persistent_inductor_cache()
    assert cache_dir() == str(tmp_path / "theirs")


def test_a_trace_the_store_cannot_keep_is_reported_and_used(tmp_path, caplog) -> None:
    from torch import fx

    from fastchgnet.compile.store import CompiledStore, stored_trace

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")  # the store's folders cannot be made under a file
    linear = torch.nn.Linear(2, 3)
    graph = stored_trace(
        CompiledStore(blocked), {"what": "linear"}, lambda: fx.symbolic_trace(linear)
    )
    x = torch.randn(4, 2)
    torch.testing.assert_close(graph(x), linear(x))
    assert "could not keep the trace" in caplog.text
