"""A persistent on-disk store of compiled prediction programs: warm starts in seconds.

A CPU prediction graph (the calculator, MD, relaxation, ``predict``) is compiled ahead of time
with AOTInductor (``torch.export`` of the traced aten graph, then
``torch._inductor.aoti_compile_and_package``) into one ``.pt2`` package and kept here. A later
process with the same model config, program and padded shape loads the package (a shared
library) in well under a second: no trace, no dynamo, no C++ build.

Location: ``$FASTCHGNET_CACHE_DIR/compiled`` when that variable is set, else
``~/.cache/fastchgnet/compiled``. Delete the folder to clear it; ``FASTCHGNET_COMPILE_STORE=0``
turns the store off (every process compiles afresh, in memory).

The programs torch.compile builds in memory (training graphs, GPU graphs) use inductor's and
AOTAutograd's own on-disk caches; ``use_persistent_inductor_cache`` points them at
``$FASTCHGNET_CACHE_DIR/inductor`` (``~/.cache/fastchgnet/inductor``) unless
``TORCHINDUCTOR_CACHE_DIR`` is set, instead of torch's default under /tmp, which many machines
clear at boot.

The key is the sha256 of everything a package depends on: torch's version, the package's own
Python sources (any code change starts a new set of keys), the model config, the program
(forces, stress, features), and every graph input's shape and dtype. Weights are graph inputs,
never baked in, so one package serves every set of weights of a config (a fine-tuned model
reuses the pretrained one's programs).

Each package is written atomically (temp file in the folder, fsync, rename) next to a JSON
record, also atomic, holding its sha256, the seconds its compile took and what it was built
for; a load checks the sha256 first, and a damaged or foreign file is reported, removed and
rebuilt. ``compile_seconds_seen`` gives the compile times on record, which the
compile-or-not decision (``fastchgnet.compile.decide``) uses as its estimate of a cold compile.

A build also starts ``warm_headers`` in a child process: inductor precompiles two C++ headers
(the wrapper's and the kernels', 6-8 s each on one core) into ``tempfile.gettempdir()`` once
per machine (until /tmp is cleared), and it does so only after its single-threaded Python
lowering of our graph (about 20 s). The child compiles a one-operation program with the same
options meanwhile, on another core, so the headers are ready (or being finished under
inductor's own file lock) when the main build reaches them. ``FASTCHGNET_WARM_HEADERS=0`` or a
one-core machine turns this off.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, fx

from fastchgnet.files import file_sha256, fsync_dir, write_json_atomic

log = logging.getLogger("fastchgnet.compile")

#: Record format version (bump when the record's fields change).
RECORD_VERSION = 1


def default_root() -> Path | None:
    """The store's folder (see the module docstring), or None when turned off."""
    if os.environ.get("FASTCHGNET_COMPILE_STORE", "1") == "0":
        return None
    base = os.environ.get("FASTCHGNET_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "fastchgnet"
    return root / "compiled"


def use_persistent_inductor_cache() -> None:
    """Point inductor's cache at ``<cache root>/inductor`` unless ``TORCHINDUCTOR_CACHE_DIR``
    is set already or the store is turned off (call before the first compile)."""
    root = default_root()
    if root is not None:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root.parent / "inductor"))


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of torch's version and every Python source file of the fastchgnet package."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(torch.__version__.encode())
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def program_key(config: Any, program: str, inputs: Sequence[Tensor], n_short_bonds: int) -> str:
    """The store key of one compiled program: config (a dataclass), program name (what it
    computes), the inputs' shapes, dtypes and device type, torch's thread count (the kernels
    are built for it, and the model's gathers take another form on one thread:
    ``model.layers.parallel_cpu``) and the code fingerprint."""
    described = {
        "code": code_fingerprint(),
        "config": asdict(config),
        "program": program,
        "inputs": [(tuple(t.shape), str(t.dtype), t.device.type) for t in inputs],
        "n_short_bonds": n_short_bonds,
        "threads": torch.get_num_threads(),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


class CompiledStore:
    """Ahead-of-time compiled prediction programs in one folder, keyed by ``program_key``.

    Args:
        root: the folder (created on first save).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.loads = 0  # packages loaded from disk in this process
        self.builds = 0  # packages compiled and saved in this process

    def package_path(self, key: str) -> Path:
        return self.root / f"{key}.pt2"

    def record_path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def has(self, key: str) -> bool:
        """Whether a package for ``key`` is on disk (not yet verified)."""
        return self.package_path(key).is_file() and self.record_path(key).is_file()

    def load(self, key: str) -> Callable[..., Any] | None:
        """The compiled program for ``key`` (called with the flat graph inputs, returns its
        outputs), or None when absent; a damaged package is reported, removed, and None."""
        package, record_file = self.package_path(key), self.record_path(key)
        if not (package.is_file() and record_file.is_file()):
            return None
        try:
            record = json.loads(record_file.read_text())
            if record.get("version") != RECORD_VERSION or record.get("key") != key:
                raise ValueError("record of another format or key")
            if file_sha256(package) != record.get("sha256"):
                raise ValueError("checksum mismatch")
            runner = torch._inductor.aoti_load_package(str(package))
        except Exception as exc:  # a damaged store entry is rebuilt, never trusted
            log.warning("compiled store: %s is unusable (%s); removed, recompiling", package, exc)
            package.unlink(missing_ok=True)
            record_file.unlink(missing_ok=True)
            return None
        self.loads += 1
        return runner

    def build(
        self,
        key: str,
        graph: fx.GraphModule,
        inputs: Sequence[Tensor],
        about: dict[str, Any],
        options: dict[str, Any] | None = None,
    ) -> Callable[..., Any]:
        """Export ``graph`` for ``inputs``, compile it with AOTInductor (inductor ``options``),
        save it under ``key`` (atomically, with its record) and return the loaded program.
        ``about``: what it was built for (kept in the record)."""
        start = time.perf_counter()
        warmer = start_warm_headers(options)
        try:
            with torch.no_grad():
                exported = torch.export.export(graph, tuple(inputs), strict=False)
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key[:16]}.", suffix=".pt2")
            os.close(fd)
            try:
                with parallel_object_builds(), without_input_checks():
                    torch._inductor.aoti_compile_and_package(
                        exported, package_path=tmp, inductor_configs=dict(options or {})
                    )
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
                sha = file_sha256(tmp)
                os.replace(tmp, self.package_path(key))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        finally:
            finish_warm_headers(warmer)
        fsync_dir(self.root)
        seconds = time.perf_counter() - start
        record = {
            "version": RECORD_VERSION,
            "key": key,
            "sha256": sha,
            "compile_seconds": round(seconds, 3),
            "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **about,
        }
        write_json_atomic(self.record_path(key), record)
        self.builds += 1
        log.info("compiled store: built %s in %.1f s (%s)", self.package_path(key), seconds, about)
        runner = torch._inductor.aoti_load_package(str(self.package_path(key)))
        return runner

    def compile_seconds_seen(self, program: str | None = None) -> list[float]:
        """Compile seconds on record (for ``program`` only, when given), oldest first."""
        seen = []
        for record_file in sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                record = json.loads(record_file.read_text())
            except (OSError, ValueError):
                continue
            if program is None or record.get("program") == program:
                seen.append(float(record.get("compile_seconds", 0.0)))
        return seen


def start_warm_headers(options: dict[str, Any] | None) -> subprocess.Popen | None:
    """Start ``warm_headers(options)`` in a child process on another core (module docstring);
    None on a one-core machine, when ``FASTCHGNET_WARM_HEADERS=0`` or when it cannot start."""
    if (os.cpu_count() or 1) < 2 or os.environ.get("FASTCHGNET_WARM_HEADERS", "1") == "0":
        return None
    code = "import json,sys; from fastchgnet.compile.store import warm_headers; "
    code += "warm_headers(json.loads(sys.argv[1]))"
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTCHGNET_WARM_HEADERS="0")
    source = str(Path(__file__).resolve().parents[2])  # the folder holding fastchgnet/
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    # stderr goes to a file, not a pipe: a chatty child never blocks on a full pipe
    err = tempfile.TemporaryFile()  # noqa: SIM115 (closed by finish_warm_headers)
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(dict(options or {}))],
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


def default_store() -> CompiledStore | None:
    """The store at ``default_root()``, or None when turned off."""
    root = default_root()
    return None if root is None else CompiledStore(root)
