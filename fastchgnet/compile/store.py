"""A persistent on-disk store of compiled prediction programs: warm starts in seconds.

A CPU prediction graph (the calculator, MD, relaxation, ``predict``) is compiled ahead of time
with AOTInductor (``torch.export`` of the traced aten graph, then
``torch._inductor.aoti_compile_and_package``) into one ``.pt2`` package and kept here. A later
process with the same model config, program and padded shape loads the package (a shared
library) in well under a second: no trace, no dynamo, no C++ build.

Location: ``$FASTCHGNET_CACHE_DIR/compiled`` when that variable is set, else
``~/.cache/fastchgnet/compiled``. Delete the folder to clear it; ``FASTCHGNET_COMPILE_STORE=0``
turns the store off (every process compiles afresh, in memory).

TorchScript graphs (``compile.script``, any sizes) are kept under ``torchscript/`` in the
same folder (``ScriptShelf``): a later MD run or relaxation loads its graph at the first call
instead of building it (about 3 s, in a child process while the first steps run eagerly).
A graph's guard is Python text, compiled when loaded only once ``size_guard`` has checked it
is size arithmetic and comparisons; the traces (pickled graph modules, ``stored_trace``), the
TorchScript graphs and the inductor packages (shared libraries) are trusted as any code
installed in this folder is.

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

How a build is sped up on a CPU (the header warm-up, the wrapper and kernel objects built side
by side, no per-input checks): ``fastchgnet.compile.package_build``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, fx

from fastchgnet.compile.package_build import (
    finish_warm_headers,
    parallel_object_builds,
    start_warm_headers,
    without_input_checks,
)
from fastchgnet.compile.size_guard import SizeGuard
from fastchgnet.compile.trace import graph_bytes, graph_from_bytes
from fastchgnet.files import (
    file_sha256,
    fsync_dir,
    read_checksummed,
    write_checksummed,
    write_json_atomic,
)

log = logging.getLogger("fastchgnet.compile")

#: Record format version (bump when the record's fields change).
RECORD_VERSION = 1
#: What loading a stored graph is priced at by the compile decision: an AOTInductor package
#: (well under a second), a TorchScript graph (about 0.05 s, and no call waits for a build).
STORED_SECONDS, SCRIPT_LOAD_SECONDS = 1.0, 0.1
#: The capture backends whose programs the store keeps.
STORED_BACKENDS = ("inductor", "torchscript")


def default_root() -> Path | None:
    """The store's folder (see the module docstring), or None when turned off."""
    if os.environ.get("FASTCHGNET_COMPILE_STORE", "1") == "0":
        return None
    base = os.environ.get("FASTCHGNET_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "fastchgnet"
    return root / "compiled"


def use_persistent_inductor_cache() -> str:
    """Point inductor's cache at ``<cache root>/inductor`` unless the user chose another
    folder in ``TORCHINDUCTOR_CACHE_DIR`` or the store is turned off (call before the first
    compile); returns the folder inductor will use, as an absolute path (not created here).
    ``import torch._dynamo`` (which ``torch.optim`` does) already writes inductor's own
    default, under the temporary folder, into that variable; that value is replaced, as
    inductor reads the variable again at every use. (Until stop 33 it was kept, and training
    graphs were cached under /tmp.)"""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    default = os.path.abspath(default_cache_dir())
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    root = default_root()
    if root is not None and (current is None or os.path.abspath(current) == default):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = current = str(root.parent / "inductor")
    return os.path.abspath(current) if current else default


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
    return json_digest(described)


def json_digest(described: Any) -> str:
    """sha256 hex digest of ``described`` as sorted JSON (anything else as its ``str``)."""
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


#: File format of a stored symbolic trace (``stored_trace``).
TRACE_FORMAT, TRACE_VERSION = "fastchgnet-trace", 1


def stored_trace(
    store: CompiledStore | None, described: Any, trace: Callable[[], fx.GraphModule]
) -> fx.GraphModule:
    """The graph ``trace()`` makes, through ``store``: a symbolic trace (CPU training's
    dynamic-size graph) takes 4.3 s of a warm start at batch 16 (8.5 s of 16.9 s while the
    model's widths were symbols too), so it is kept in
    ``<store>/traced/`` under the digest of ``described`` (what the trace depends on) and the
    code fingerprint, in a checksummed file (``fastchgnet.files.write_checksummed``, atomic).
    The graph is always the one read back from its bytes (in memory without a store): the
    first process then compiles the very graph later ones load, so inductor's and
    AOTAutograd's caches serve them (a freshly traced graph and its reloaded copy miss each
    other's cache entries). A damaged file is reported, removed and traced again; a file that
    cannot be written is reported and the run goes on."""
    path = None
    if store is not None:
        key = json_digest({"code": code_fingerprint(), "described": described})
        path = store.root / "traced" / f"{key}.pt"
        payload = read_kept(path, TRACE_FORMAT, TRACE_VERSION)
        if payload is not None:
            try:
                return graph_from_bytes(payload["graph"].numpy().tobytes())
            except Exception as exc:  # checksummed, yet not a graph: never trusted
                forget(path, exc)
    data = graph_bytes(trace())
    if path is not None:
        graph = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        try:  # a store that cannot be written costs the next process a trace, nothing more
            path.parent.mkdir(parents=True, exist_ok=True)
            write_checksummed(path, {"graph": graph}, TRACE_FORMAT, TRACE_VERSION)
        except OSError as exc:
            log.warning("compiled store: could not keep the trace in %s (%s)", path, exc)
    return graph_from_bytes(data)


def read_kept(path: Path, kind: str, version: int) -> Any | None:
    """The payload of a file the store kept (``write_checksummed``), or None: no file, or one
    that cannot be opened or read through (permissions, I/O, memory) is reported and skipped,
    not ours to judge or remove; a damaged or foreign one is reported and removed where it can
    be (``forget``)."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("compiled store: cannot read %s (%s); skipped", path, exc)
        return None
    try:
        return read_checksummed(path, kind, [version])[1]
    except Exception as exc:  # a damaged or foreign file is made again, never trusted
        if isinstance(exc.__cause__, (OSError, MemoryError)) or isinstance(exc, MemoryError):
            log.warning("compiled store: cannot read %s (%s); skipped", path, exc)
        else:
            forget(path, exc)
        return None


def forget(path: Path, why: Exception) -> None:
    """Report ``path`` as unusable and remove it; a removal that fails is left to the next
    writer (which replaces the file atomically)."""
    log.warning("compiled store: %s is unusable (%s); removed, made again", path, why)
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


#: File format of a stored TorchScript graph (``ScriptShelf``).
SCRIPT_FORMAT, SCRIPT_VERSION = "fastchgnet-torchscript", 1


class ScriptShelf:
    """The TorchScript graphs of one program (``compile.script.ScriptedProgram``) in ``store``:
    ``<store>/torchscript/<digest>/``, the digest of ``described`` (what the graphs depend on:
    ``CapturedModel._about``, with the gathers' form) and the code fingerprint. A graph serves
    any sizes its guard allows, so one build serves every later process and structure of that
    config and program: a warm MD run starts on its graph at the first call.

    Each graph is one checksummed file (``fastchgnet.files.write_checksummed``, atomic) named
    by its guard: the ``torch.jit.save`` bytes, the guard's state and the build's seconds. A
    damaged or foreign file is reported and removed (the graph is built again); a file that
    cannot be written is reported and the run goes on.

    The folder is read once per shelf (the compile decision and the build both ask; a capture
    keeps one shelf per program), and the graphs this shelf keeps are added to what it read:
    a graph another process keeps after that read is not seen by this shelf."""

    def __init__(self, store: CompiledStore, described: Any) -> None:
        key = json_digest({"code": code_fingerprint(), "described": described})
        self.folder = store.root / "torchscript" / key
        self._found: list[tuple[SizeGuard, bytes, float]] | None = None

    def graphs(self) -> list[tuple[SizeGuard, bytes, float]]:
        """(guard, ``torch.jit.save`` bytes, build seconds) of each kept graph; a file that
        cannot be read (permissions) is skipped; a damaged one, or one whose guard is more than
        a size guard (``size_guard.checked_state``), is removed where it can be."""
        if self._found is None:
            self._found = self._read()
        return list(self._found or ())

    def _read(self) -> list[tuple[SizeGuard, bytes, float]] | None:
        """The kept graphs; None where the folder cannot be listed (asked again next time)."""
        found: list[tuple[SizeGuard, bytes, float]] = []
        try:
            paths = sorted(self.folder.glob("*.pt")) if self.folder.is_dir() else []
        except OSError as exc:
            log.warning("compiled store: cannot list %s (%s)", self.folder, exc)
            return None
        for path in paths:
            payload = read_kept(path, SCRIPT_FORMAT, SCRIPT_VERSION)
            if payload is None:
                continue
            try:
                guard = SizeGuard.from_state(dict(payload["guard"]))
                data = payload["graph"].numpy().tobytes()
                found.append((guard, data, float(payload["seconds"])))
            except Exception as exc:  # checksummed, yet not a graph and its guard: never run
                forget(path, exc)
        return found

    def keep(self, guard: SizeGuard, data: bytes, seconds: float) -> None:
        """Keep one graph: its ``guard``, ``data`` (its ``torch.jit.save`` bytes) and the
        ``seconds`` its build took."""
        state = guard.__getstate__()  # strings and ints
        name = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:32]
        payload = {
            "guard": state,
            "graph": torch.frombuffer(bytearray(data), dtype=torch.uint8),
            "seconds": seconds,
        }
        if self._found is not None:  # this process holds the graph, written or not
            self._found.append((guard, data, seconds))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_checksummed(self.folder / f"{name}.pt", payload, SCRIPT_FORMAT, SCRIPT_VERSION)
        except OSError as exc:
            log.warning("compiled store: could not keep a TorchScript graph (%s)", exc)


def default_store(backend: str = "inductor") -> CompiledStore | None:
    """The store at ``default_root()``, or None when turned off or for a capture ``backend``
    whose programs it does not keep (``STORED_BACKENDS``)."""
    root = default_root() if backend in STORED_BACKENDS else None
    return None if root is None else CompiledStore(root)
