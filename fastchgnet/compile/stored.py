"""A ``CapturedModel``'s CPU prediction program from the on-disk store: loaded, or compiled
ahead of time (AOTInductor) into the store and loaded.

The build stays in place, not in a child process as TorchScript's may (``compile.background``):
on 2 cores its C++ compiles already use both, and an MD run that went on eagerly meanwhile
(stop 46, 2000 steps, 2 threads) took its build from about 20 to 30 s, its eager steps to
one thread, and ran 90.2 and 89.2 s whole on 32 and 64 atoms, where builds in place ran
82.9-93.3 and 82.7-87.6 s (stop 45).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastchgnet.compile.trace import Program, batch_inputs, trace_program
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
    if runner is not None:
        stats.loaded += 1
        stats.load_seconds += time.perf_counter() - start
        how = "loaded from"
    else:
        traced = trace_program(captured.model, program, batch, labels)
        about = {"program": key[0], "model_dtype": str(batch.lattice.dtype)}
        inputs = [*captured._state(), *batch_inputs(batch)]
        runner = store.build(store_key, traced, inputs, about, options)
        stats.compile_seconds += time.perf_counter() - start
        how = "compiled ahead of time into"
        stats.graphs += 1  # built: a loaded program counts in ``loaded`` only
    seconds = time.perf_counter() - start
    log.info("graph %d (%s, shapes %s): %s %s in %.2f s", stats.graphs + stats.loaded, key[0],
             key[3][:1], how, store.root, seconds)  # fmt: skip
    stats.keys.append(key)
    captured._compiled[key] = runner  # its key in stats.keys: the first call is not timed
    return runner
