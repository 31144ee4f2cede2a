"""Faster AOTInductor package builds on a CPU: what ``CompiledStore.build`` wraps its build in.

A build also starts ``warm_headers`` in a child process: inductor precompiles two C++ headers
(the wrapper's and the kernels', 6-8 s each on one core) into ``tempfile.gettempdir()`` once
per machine (until /tmp is cleared), and it does so only after its single-threaded Python
lowering of our graph (about 20 s). The child meanwhile compiles a one-operation program with
the same options on another core, up to the point where inductor has precompiled the headers,
and exits there, so the headers are ready (or being finished under inductor's own file lock)
when the main build reaches them. ``FASTCHGNET_WARM_HEADERS=0`` or a
one-core machine turns this off.

``parallel_object_builds`` compiles the package's wrapper and kernel objects side by side (two
g++ processes instead of one after the other), and ``without_input_checks`` leaves inductor's
per-input check functions out of the wrapper, the longest of the two.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger("fastchgnet.compile")


def start_warm_headers(
    options: dict[str, Any] | None, *, kernel_groups: bool = False
) -> subprocess.Popen | None:
    """Start ``warm_headers(options)`` in a child process on another core (module docstring),
    or with ``kernel_groups`` ``kernel_groups.warm_prefix_header`` (the header of training
    graphs' kernels, in this process's header folders); None on a one-core machine, when
    ``FASTCHGNET_WARM_HEADERS=0`` or when it cannot start."""
    if (os.cpu_count() or 1) < 2 or os.environ.get("FASTCHGNET_WARM_HEADERS", "1") == "0":
        return None
    module, function, argument = (
        ("kernel_groups", "warm_prefix_header", header_folders())
        if kernel_groups
        else ("package_build", "warm_headers", dict(options or {}))
    )
    code = f"import json,sys; from fastchgnet.compile.{module} import {function}; "
    code += f"{function}(json.loads(sys.argv[1]))"
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTCHGNET_WARM_HEADERS="0")
    source = str(Path(__file__).resolve().parents[2])  # the folder holding fastchgnet/
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    # stderr goes to a file, not a pipe: a chatty child never blocks on a full pipe
    err = tempfile.TemporaryFile()  # noqa: SIM115 (closed by finish_warm_headers)
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(argument)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
        process.err_file = err  # type: ignore[attr-defined]
        return process
    except OSError as exc:
        err.close()
        log.debug("compiled store: header warm-up not started (%s)", exc)
        return None


def header_folders() -> list[str]:
    """Where this process's inductor keeps its precompiled headers and their locks (fixed
    when inductor's code cache was imported)."""
    from torch._inductor import codecache

    return [codecache._HEADER_DIR, codecache._HEADER_LOCK_DIR]


def finish_warm_headers(process: subprocess.Popen | None, timeout: float = 120.0) -> bool | None:
    """Wait for the warm-up child (never killed: it may be writing a header under inductor's
    lock); True when it succeeded, False when it failed (logged), None when none ran or it
    is still running after ``timeout`` seconds."""
    if process is None:
        return None
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.debug("compiled store: header warm-up still running after %.0f s", timeout)
        return None
    with process.err_file as err:  # type: ignore[attr-defined]
        if process.returncode == 0:
            return True
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
    log.debug("compiled store: header warm-up failed (%s)", tail)
    return False


def warm_headers(options: dict[str, Any]) -> None:
    """Build inductor's precompiled headers for AOTInductor ``options`` (CPU), which every
    later AOTInductor build on this machine reuses, and end the process.

    A one-operation program is compiled with those options up to its first object build:
    inductor precompiles both headers just before it. The process then exits (status 0)
    without building the program, whose wrapper alone takes 4 s of a core the main build
    needs for its own objects at about that time (a cold MD build ran its objects in 9.1 s
    beside a child that built its program, 6 s alone). Meant for the child process of
    ``start_warm_headers``: it never returns."""
    from torch._inductor import cpp_builder

    class _One(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return (x * 2.0 + 1.0).sum(0)

    folder = tempfile.mkdtemp(prefix="fastchgnet-headers-")

    def done() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        sys.stdout.flush()
        os._exit(0)

    def build(target: Any) -> None:
        if str(getattr(target, "_name", "")).endswith((".wrapper", ".kernel")):
            done()  # the headers exist: the program itself is not wanted
        original(target)

    original = cpp_builder.CppBuilder.build
    cpp_builder.CppBuilder.build = build
    torch.set_num_threads(1)
    exported = torch.export.export(_One(), (torch.ones(4, 3),), strict=False)
    torch._inductor.aoti_compile_and_package(
        exported, package_path=os.path.join(folder, "one.pt2"), inductor_configs=options
    )
    done()


#: Environment variable that keeps inductor's per-input checks in the packages we build
KEEP_INPUT_CHECKS = "FASTCHGNET_AOTI_INPUT_CHECKS"


@contextmanager
def without_input_checks() -> Iterator[None]:
    """Within the block, AOTInductor writes its wrapper without per-input check functions.

    Inductor writes one C++ function per graph input (dtype, every size and stride, device,
    each mismatch with its own ``std::stringstream`` message) and runs them all only when the
    ``AOTI_RUNTIME_CHECK_INPUTS`` environment variable is set. Our weights are graph inputs, so
    the LiMnO2 MD graph has 124 of them: 6,500 of the wrapper's 9,800 lines. The wrapper's
    -O0 build is the longest step of a package build (its kernels build meanwhile, in 3.6 s,
    ``parallel_object_builds``): 6.5 s with the checks, 5.1 s without. Our callers hand a
    package exactly the inputs it was built for (the store key holds every input's shape and
    dtype), so the checks never run. The wrapper keeps an empty ``__check_inputs_outputs``,
    which its ``run_impl`` calls, and the environment test its size checks of intermediate
    buffers use. ``FASTCHGNET_AOTI_INPUT_CHECKS=1`` keeps inductor's checks
    (for debugging with ``AOTI_RUNTIME_CHECK_INPUTS=1``), as does a torch without the method.
    """
    from torch._inductor.codegen import cpp_wrapper_cpu

    wrapper = getattr(cpp_wrapper_cpu, "CppWrapperCpu", None)
    name = "generate_input_output_runtime_checks"
    if os.environ.get(KEEP_INPUT_CHECKS, "0") == "1" or not hasattr(wrapper, name):
        yield
        return

    def no_checks(self: Any) -> None:
        self.prefix.splice_aot(
            """
            static bool _check_aoti_runtime_check_inputs_env() {
                const static char* env_var_value = getenv("AOTI_RUNTIME_CHECK_INPUTS");
                const static bool result = env_var_value != nullptr && env_var_value[0] != '0';
                return result;
            }

            AOTI_NOINLINE static void __check_inputs_outputs(
                AtenTensorHandle* input_handles,
                AtenTensorHandle* output_handles) {}
            """
        )

    original = getattr(wrapper, name)
    setattr(wrapper, name, no_checks)
    try:
        yield
    finally:
        setattr(wrapper, name, original)


@contextmanager
def parallel_object_builds() -> Iterator[None]:
    """Within the block, AOTInductor compiles its wrapper and kernel objects side by side.

    Inductor builds the wrapper's ``.o`` (6.5-7.4 s at -O0 for the MD graph) and then the
    kernels' (3.4 s), one compiler process at a time. Here the wrapper's compiler starts in a
    thread and the kernels' runs meanwhile; the kernels' build returns, and any other build
    (the link) starts, only once the wrapper's is done, and a failure of it is raised there.
    ``CppBuilder.build`` is replaced for the block, for the whole process. Off (inductor's own
    order) on a one-core machine, with ``FASTCHGNET_PARALLEL_OBJECTS=0``, or when this
    torch's ``cpp_builder`` lacks what it needs.
    """
    from torch._inductor import cpp_builder

    builder = getattr(cpp_builder, "CppBuilder", None)
    needed = ("_run_compile_cmd", "_remove_dir", "_BUILD_TEMP_DIR")
    if (
        (os.cpu_count() or 1) < 2
        or os.environ.get("FASTCHGNET_PARALLEL_OBJECTS", "1") == "0"
        or builder is None
        or not all(hasattr(cpp_builder, name) for name in needed)
    ):
        yield
        return
    original = builder.build
    pending: list[tuple[threading.Thread, list[BaseException]]] = []

    def compile_object(target: Any, errors: list[BaseException]) -> None:
        # CppBuilder.build's steps without its dynamo_timed wrapper, whose compile-event
        # bookkeeping is not meant to run from a second thread
        folder = os.path.join(target._output_dir, f"{target._name}_{cpp_builder._BUILD_TEMP_DIR}")
        try:
            os.makedirs(folder, exist_ok=True)
            cpp_builder._run_compile_cmd(target.get_command_line(), folder)
            cpp_builder._remove_dir(folder)
        except BaseException as exc:  # raised in the caller's thread by the next build
            errors.append(exc)

    def build(target: Any) -> None:
        name = str(getattr(target, "_name", ""))
        wrapper_object = name.endswith(".wrapper") and target.get_target_file_path().endswith(".o")
        if wrapper_object and not getattr(target, "_use_relative_path", True):
            errors: list[BaseException] = []
            thread = threading.Thread(target=compile_object, args=(target, errors), daemon=True)
            thread.start()
            pending.append((thread, errors))
            return
        if not name.endswith(".kernel"):  # e.g. the link: it needs the objects built
            wait_for_pending()
            original(target)
            return
        try:
            original(target)
        finally:
            wait_for_pending()

    def wait_for_pending() -> None:
        while pending:
            thread, errors = pending.pop()
            thread.join()
            if errors:
                raise errors[0]

    builder.build = build
    try:
        yield
    finally:
        builder.build = original
        for thread, _ in pending:
            thread.join()
