"""Inductor's C++ kernels of one CPU graph built a few to a g++ call, not one each.

Inductor builds every fused CPU kernel of a graph as its own shared library: one g++ call
per kernel. About 0.65 s of each call is fixed (the prefix header's templates, which gcc
instantiates again in every file, precompiled header or not), and the conservative training
graph has 112 kernels. Here the generated module's ``async_compile.cpp_pybinding`` calls are
held back until its ``async_compile.wait(globals())``, and the held kernels are then built in
``compile_threads`` groups: one source file per group (each kernel in its own namespace, one
Python binding per kernel), on inductor's own compile pool. The kernels' code and flags are
inductor's, unchanged, so the results are the same to the bit. The ``wait`` only starts the
builds: each group is waited for at the first call of one of its kernels, so g++ builds a
training graph's forward kernels while inductor generates its backward.

Twenty kernels of our graphs took 15.3 s as twenty g++ calls and 2.3 s as one (this CPU).

The groups are cached like inductor's kernels (``CppCodeCache``: under
``TORCHINDUCTOR_CACHE_DIR``, keyed by source and command line), so a warm start loads them.
The split depends on the kernels and on inductor's compile thread count (``compile_threads``:
the CPUs this process may use, or ``TORCHINDUCTOR_COMPILE_THREADS``), so a process that may use
another number of CPUs builds its groups anew. A group that fails to build falls back to
inductor's one-call-per-kernel build, with a warning, in every process that meets it (no
failure is recorded). Template kernels (max-autotune's GEMMs, flex attention), which include
headers of their own, are left to inductor. ``FASTCHGNET_GROUP_KERNELS=0`` turns the grouping
off.

``unguarded_sum_lengths`` is the other change to inductor's C++ kernels: a graph with dynamic
sizes keeps one build for every length of its sums.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

from torch._inductor import async_compile as inductor_async
from torch._inductor.codecache import CppPythonBindingsCodeCache
from torch._inductor.utils import clear_on_fresh_cache

log = logging.getLogger("fastchgnet.compile")

#: inductor's CPU kernel entry point: the one C function each generated source defines
_ENTRY = re.compile(r'extern\s+"C"\s+void\s+kernel\(')
_PREFIX = "#include <torch/csrc/inductor/cpp_prefix.h>"
_installed: list[tuple[Callable, Callable]] = []


class _HeldKernel:
    """A kernel whose build waits for its module's ``wait``, which starts its group's build;
    its first call waits for that (``_PendingGroup``). Called before the ``wait``, it builds
    alone (inductor's way) and runs."""

    def __init__(self, argtypes: Sequence[str], source: str):
        self.argtypes, self.source = list(argtypes), source
        self.built: Callable | None = None
        self.pending: _PendingGroup | None = None  # its group's build, once under way

    def groupable(self) -> bool:
        """Inductor's plain CPU kernel: the prefix header, then code with one entry point and
        no include of its own (template kernels, such as max-autotune's GEMMs, include more
        headers, which must not land inside a namespace)."""
        source = self.source.lstrip()
        return (
            source.startswith(_PREFIX)
            and len(_ENTRY.findall(source)) == 1
            and "#include" not in source[len(_PREFIX) :]
        )

    def build_alone(self) -> Callable:
        if self.built is None:
            self.built = CppPythonBindingsCodeCache.load_pybinding(self.argtypes, self.source)
        return self.built

    def __call__(self, *args: Any) -> Any:
        if self.built is None and self.pending is not None:
            self.pending.resolve()
        return self.build_alone()(*args)


class _PendingGroup:
    """One group's build under way on inductor's compile pool, waited for at the first call
    of any of its kernels, not at its module's ``wait``: while g++ builds a training graph's
    forward kernels, inductor goes on to generate its backward. At that first call every
    kernel of the group takes its built function, in its module's globals too (later calls go
    straight to it); a group that fails to build falls back to one build per kernel, loudly,
    all of them started on the compile pool (``submit``) before any is waited for."""

    def __init__(
        self,
        named: list[tuple[str, _HeldKernel]],
        load: Callable[[], Any] | None,
        scope: dict[str, Any],
        submit: Callable | None,
    ):
        self.named, self.load, self.scope, self.submit = named, load, scope, submit
        self.lock = threading.Lock()
        for _, kernel in named:
            kernel.pending = self

    def resolve(self) -> None:
        with self.lock:
            if self.load is None and all(k.built is not None for _, k in self.named):
                return
            module = None
            if self.load is not None:
                load, self.load = self.load, None
                try:
                    module = load()
                except Exception as error:  # any build failure falls back, loudly
                    log.warning(
                        "kernel group of %d failed to build (%s); one call each",
                        len(self.named),
                        error,
                    )
            if module is None:  # inductor's own build of each kernel, on its compile pool
                alone = [
                    (
                        kernel,
                        CppPythonBindingsCodeCache.load_pybinding_async(
                            kernel.argtypes, kernel.source, submit_fn=self.submit
                        ),
                    )
                    for _, kernel in self.named
                    if kernel.built is None
                ]
                for kernel, load_one in alone:
                    kernel.built = load_one()
            for index, (name, kernel) in enumerate(self.named):
                if kernel.built is None:
                    kernel.built = getattr(module, f"kernel_{index}")
                kernel.pending = None
                if self.scope.get(name) is kernel:
                    self.scope[name] = kernel.built


@clear_on_fresh_cache
class _GroupCache(CppPythonBindingsCodeCache):
    """inductor's C++ build cache (files, keys, locks, precompiled header, compile pool),
    for group sources: their bindings are in the source, so no suffix is added here."""

    cache: ClassVar[dict[str, Callable[[], Any]]] = {}

    @staticmethod
    def cache_clear() -> None:
        _GroupCache.cache.clear()


def _binding(index: int, argtypes: Sequence[str]) -> str:
    args = ", ".join(
        f"arg<{kind.replace('const ', '')}>(args, {n})" for n, kind in enumerate(argtypes)
    )
    return f"""
static PyObject* kernel_{index}_py(PyObject*, PyObject* args) {{
    try {{
        if (!PyTuple_CheckExact(args) || PyTuple_GET_SIZE(args) != {len(argtypes)})
            throw std::runtime_error("kernel_{index} takes a tuple of {len(argtypes)} args");
        group_{index}::kernel({args});
        Py_RETURN_NONE;
    }} catch (std::exception const& e) {{
        PyErr_SetString(PyExc_RuntimeError, e.what());
        return nullptr;
    }} catch (...) {{
        PyErr_SetString(PyExc_RuntimeError, "unhandled error in kernel_{index}");
        return nullptr;
    }}
}}"""


#: the bindings' shared part: argument parsing as inductor's own bindings do it (tensors by
#: the data-pointer function whose address inductor's loader puts in the environment)
_BINDINGS_HEAD = """
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <cerrno>
#include <cstdlib>
#include <stdexcept>

static void* (*tensor_data_ptr)(PyObject* obj);

template <typename T> static inline T arg(PyObject* args, size_t n) {
    static_assert(std::is_pointer_v<T>, "arg type must be pointer or long");
    return static_cast<T>(tensor_data_ptr(PyTuple_GET_ITEM(args, n)));
}
template <> inline int64_t arg<int64_t>(PyObject* args, size_t n) {
    auto result = PyLong_AsSsize_t(PyTuple_GET_ITEM(args, n));
    if (result == -1 && PyErr_Occurred()) throw std::runtime_error("expected int arg");
    return result;
}
template <> inline uintptr_t arg<uintptr_t>(PyObject* args, size_t n) {
    auto result = PyLong_AsVoidPtr(PyTuple_GET_ITEM(args, n));
    if (result == reinterpret_cast<void*>(-1) && PyErr_Occurred())
        throw std::runtime_error("expected int arg");
    return reinterpret_cast<uintptr_t>(result);
}
template <> inline float arg<float>(PyObject* args, size_t n) {
    auto result = PyFloat_AsDouble(PyTuple_GET_ITEM(args, n));
    if (result == -1.0 && PyErr_Occurred()) throw std::runtime_error("expected float arg");
    return static_cast<float>(result);
}
"""

_MODULE = """
static PyMethodDef methods[] = {
%s
    {NULL, NULL, 0, NULL}};
static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit_kernel(void) {
    const char* text = std::getenv("_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR");
    char* end = nullptr;
    errno = 0;
    uintptr_t address = text ? std::strtoull(text, &end, 10) : 0;
    if (!text || errno != 0 || end == text || address == 0) {
        PyErr_SetString(PyExc_RuntimeError, "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR unset");
        return nullptr;
    }
    tensor_data_ptr = reinterpret_cast<decltype(tensor_data_ptr)>(address);
    return PyModule_Create(&module_def);
}
"""


def group_source(kernels: Sequence[_HeldKernel]) -> str:
    """One C++ source for several inductor kernels: each kernel's code in ``group_<i>``
    (its entry point no longer ``extern "C"``, so the names do not clash), then a Python
    module ``kernel`` with one method ``kernel_<i>`` per kernel."""
    parts = [_PREFIX]
    for index, kernel in enumerate(kernels):
        body = _ENTRY.sub("void kernel(", kernel.source.lstrip()[len(_PREFIX) :], count=1)
        parts.append(f"namespace group_{index} {{\n{body}\n}}  // namespace group_{index}")
    parts.append(_BINDINGS_HEAD)
    parts += [_binding(index, kernel.argtypes) for index, kernel in enumerate(kernels)]
    entries = "\n".join(
        f'    {{"kernel_{i}", kernel_{i}_py, METH_VARARGS, ""}},' for i in range(len(kernels))
    )
    parts.append(_MODULE % entries)
    return "\n".join(parts)


def split(kernels: Sequence[_HeldKernel], groups: int) -> list[list[_HeldKernel]]:
    """Consecutive runs of ``kernels`` into at most ``groups`` groups of about equal source
    length (the same split for the same kernels: the groups' cache keys hold still)."""
    total = sum(len(k.source) for k in kernels)
    out: list[list[_HeldKernel]] = [[]]
    done = 0
    for kernel in kernels:
        if out[-1] and done >= total * len(out) / groups:
            out.append([])
        out[-1].append(kernel)
        done += len(kernel.source)
    return out


def _build_groups(held: list[tuple[str, _HeldKernel]], scope: dict[str, Any]) -> None:
    """Start the builds of ``held`` (name in ``scope``, kernel) in ``compile_threads`` groups
    on inductor's compile pool; each group is waited for at its first call (``_PendingGroup``).
    On one compile thread inductor builds in the caller, under the lock that ``load_async``
    holds, so the groups are built here."""
    threads = inductor_async.get_compile_threads()
    submit = inductor_async.AsyncCompile.submit if threads > 1 else None
    first = 0
    for kernels in split([kernel for _, kernel in held], max(1, threads)):
        group, first = held[first : first + len(kernels)], first + len(kernels)
        try:
            load = _GroupCache.load_async(group_source(kernels), "cpu", submit_fn=submit)
        except Exception as error:  # any failure to start falls back, loudly
            log.warning("kernel group of %d failed to start (%s); one call each", len(group), error)
            load = None
        pending = _PendingGroup(group, load, scope, submit)
        if submit is None or load is None:
            pending.resolve()


def warm_prefix_header(folders: Sequence[str] | None = None) -> None:
    """Precompile the prefix header that kernel groups build with (in ``folders``, from
    ``package_build.header_folders``, else this process's own), under inductor's file
    lock; nothing to do when it exists. A one-kernel group's ``load_async`` without a compile
    pool precompiles the header and returns before building anything."""
    from torch._inductor import codecache

    if folders:
        codecache._HEADER_DIR, codecache._HEADER_LOCK_DIR = folders
    body = '\nextern "C" void kernel(float* out_ptr0) { out_ptr0[0] = 0.0f; }\n'
    _GroupCache.load_async(group_source([_HeldKernel(["float*"], _PREFIX + body)]), "cpu")


def while_header_builds(trace: Callable[[], Any]) -> Callable[[], Any]:
    """``trace`` that first starts building the prefix header in a child process on another
    core (``package_build.start_warm_headers(kernel_groups=True)``): a graph that must be
    traced is about to be built cold, and inductor would otherwise build the header (5 s) in
    the middle of that build, on its only busy core. The child is reaped when it ends. A
    process whose inductor has found or built its headers already starts none."""

    def traced() -> Any:
        from torch._inductor import codecache

        from fastchgnet.compile.package_build import finish_warm_headers, start_warm_headers

        known = getattr(codecache._precompile_header, "cache_info", None)
        if known is not None and known().currsize:
            return trace()
        process = start_warm_headers(None, kernel_groups=True)
        if process is not None:
            threading.Thread(target=finish_warm_headers, args=(process,), daemon=True).start()
        return trace()

    return traced


def group_cpu_kernels() -> None:
    """Build inductor's CPU kernels in groups from now on in this process (idempotent; off
    with ``FASTCHGNET_GROUP_KERNELS=0``). See the module docstring."""
    if _installed or os.environ.get("FASTCHGNET_GROUP_KERNELS", "1") == "0":
        return
    compile_cls = inductor_async.AsyncCompile
    original_bind, original_wait = compile_cls.cpp_pybinding, compile_cls.wait

    def cpp_pybinding(self: Any, argtypes: list[str], source_code: str) -> Any:
        kernel = _HeldKernel(argtypes, source_code)
        return kernel if kernel.groupable() else original_bind(self, argtypes, source_code)

    def wait(self: Any, scope: dict[str, Any]) -> None:
        held = [
            (name, value)
            for name, value in scope.items()
            if isinstance(value, _HeldKernel) and value.built is None and value.pending is None
        ]
        if held:
            _build_groups(held, scope)
        original_wait(self, scope)

    compile_cls.cpp_pybinding, compile_cls.wait = cpp_pybinding, wait
    _installed.append((original_bind, original_wait))


def ungroup_cpu_kernels() -> None:
    """Give inductor back its own kernel builds (tests)."""
    if _installed:
        compile_cls = inductor_async.AsyncCompile
        compile_cls.cpp_pybinding, compile_cls.wait = _installed.pop()


@contextlib.contextmanager
def unguarded_sum_lengths() -> Iterator[None]:
    """Within the block, inductor's C++ kernels choose their sums' accumulation without
    guarding on a symbolic length: the cascade accumulator where the length is above 4096 for
    every size, plain vector sums elsewhere (aten's CPU sums are vectorised the same way). A
    graph with dynamic sizes otherwise recompiles whenever a batch's atoms, bonds or angles
    cross a length its sums were built for (one cold build each, about a minute on 2 cores).
    Nothing changes where this torch's inductor has no such choice."""
    try:
        from torch._inductor.codegen.cpp import CppKernel
        from torch._inductor.virtualized import V
    except ImportError:  # pragma: no cover - another inductor
        yield
        return
    original = getattr(CppKernel, "need_use_acc_helper", None)
    if original is None:  # pragma: no cover - another inductor
        yield
        return

    def need_use_acc_helper(self: object, *args: object, **kwargs: object) -> bool:
        sizevars = V.graph.sizevars
        sizevars.guard_or_false = sizevars.statically_known_true  # this call only
        try:
            return original(self, *args, **kwargs)
        finally:
            del sizevars.guard_or_false

    CppKernel.need_use_acc_helper = need_use_acc_helper
    try:
        yield
    finally:
        CppKernel.need_use_acc_helper = original
