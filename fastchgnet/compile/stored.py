"""A ``CapturedModel``'s CPU prediction program from the on-disk store: loaded, or compiled
ahead of time into the store and loaded, in place or, with ``background``, in a child process
while the calls run eagerly (``background.Deferred``).

An inductor build of an MD graph takes 15-30 s on 2 cores, most of it in the C++ compiler;
in place, an MD run stands still for it. In a child forked from the caller (the model, the
imports and the inputs already there), the package is written to the store as any build
writes it (atomically, with its checksum), and the first call after the child is done loads
it from there (about a second) and runs compiled from then on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from fastchgnet.compile.background import Deferred, available_in_background
from fastchgnet.compile.trace import Program, batch_inputs, eager_call, model_state, trace_program
from fastchgnet.data.batch import GraphBatch
from fastchgnet.data.labels import LabelBatch

if TYPE_CHECKING:
    from fastchgnet.compile.capture import CapturedModel

log = logging.getLogger("fastchgnet.compile")


def program_from_store(
    captured: CapturedModel,
    key: tuple,
    program: Program,
    batch: GraphBatch,
    labels: LabelBatch | None,
    options: dict[str, Any],
) -> Callable[..., Any] | None:
    """``captured``'s program for ``key`` from its store (``options``: inductor's for a
    build), kept in ``captured``; None when this call's program is not one the store keeps."""
    store = captured.store
    store_key = captured.store_key(key[0], batch, labels)
    if store_key is None or store is None:
        return None
    stats = captured.stats
    start = time.perf_counter()
    runner = store.load(store_key)

    def build() -> Callable[..., Any]:
        traced = trace_program(captured.model, program, batch, labels)
        about = {"program": key[0], "model_dtype": str(batch.lattice.dtype)}
        inputs = [*model_state(captured.model)[1], *batch_inputs(batch)]
        return store.build(store_key, traced, inputs, about, options)

    if runner is not None:
        stats.loaded += 1
        stats.load_seconds += time.perf_counter() - start
        how = "loaded from"
    elif captured.background and available_in_background():
        return _in_background(captured, key, program, build, store_key, batch.n_short_bonds)
    else:
        runner = build()
        stats.compile_seconds += time.perf_counter() - start
        how = "compiled ahead of time into"
    seconds = time.perf_counter() - start
    log.info("graph %d (%s, shapes %s): %s %s in %.2f s", stats.graphs, *key[:1], key[3][:1],
             how, store.root, seconds)  # fmt: skip
    _keep(captured, key, runner)
    return runner


def _keep(captured: CapturedModel, key: tuple, runner: Callable[..., Any]) -> None:
    captured.stats.graphs += 1
    if key not in captured.stats.keys:  # the first call of a stored program is not a compile
        captured.stats.keys.append(key)
    captured._compiled[key] = runner


def _in_background(
    captured: CapturedModel,
    key: tuple,
    program: Program,
    build: Callable[[], Callable[..., Any]],
    store_key: str,
    n_short_bonds: int,
) -> Deferred:
    """A ``Deferred`` whose child builds the package into the store; kept under ``key`` until
    the package is loaded (or, if the child failed, built here)."""
    store, stats = captured.store, captured.stats
    assert store is not None

    def in_child() -> bool:
        build()
        return True

    def ready(done: bool | None) -> Callable[..., Any]:
        start = time.perf_counter()
        runner = store.load(store_key) if done else None
        if runner is None:  # the child failed, or its package does not load: build it here
            runner = build()
            stats.compile_seconds += time.perf_counter() - start
        else:
            stats.background_seconds += deferred.seconds
            stats.load_seconds += time.perf_counter() - start
        log.info("graph %d (%s): ready from %s in the background", stats.graphs + 1, key[0],
                 store.root)  # fmt: skip
        _keep(captured, key, runner)
        return runner

    n_state = len(model_state(captured.model)[0])
    eager = eager_call(captured.model, program, n_state, False, n_short_bonds)
    log.info("compiling %s into %s in a child process; calls run eagerly meanwhile", key[0],
             store.root)  # fmt: skip
    deferred = Deferred(in_child, eager, ready, threads=torch.get_num_threads())
    captured._compiled[key] = deferred
    captured.stats.keys.append(key)
    return deferred
