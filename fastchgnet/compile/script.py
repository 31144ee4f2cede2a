"""A traced aten graph run by TorchScript's interpreter: a capture that builds in seconds.

Inductor turns a traced graph (``trace.trace_program``) into fused C++ kernels; on a CPU that
build takes 20-60 s. TorchScript's interpreter runs the same aten graph op by op in C++: no
kernel is generated or fused, but no Python runs per op either, and the build takes well under
a second after the 2-3 s symbolic trace. On small structures, where an eager call is mostly per-op
overhead (Python, autograd bookkeeping, the derivative graph), that is most of the gain: the
LiMnO2 force-and-stress call (8 atoms, 1461 graph ops, 2 threads) took 7.0 ms against 9.8 ms
eager and 10.0 ms for the same graph run by FX's Python code.

torch 2.13 marks ``torch.jit.script`` deprecated (its warning is silenced here, where the use
is deliberate). A torch without it, or Python 3.14 and later (where torch does not support
it), leaves TorchScript out of the compile decision (``decide.capture_backends``), and asking
for it by name raises in one line.

The interpreter runs any sizes, so a TorchScript capture is traced once with symbolic sizes
(``trace.trace_program(free_counts=True)``: atoms, bonds, angles, structures and short bonds)
and serves every batch unpadded (``ScriptedProgram``): no capacity, no padding and no second
build when an MD run's bonds outgrow a shape. Sizes of 0 or 1 still trace as constants, and a
size the model branches on would too; each graph keeps the trace's guards (``SizeGuard``, one
Python expression over the input sizes per call) and a batch that breaks them gets a graph of
its own (a relaxation that ends with one structure left builds twice). With ``eager`` (what
``run_md`` and ``relax`` ask for) builds run in a forked child while calls run eagerly
(``compile.background``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, fx

from fastchgnet.compile.background import (
    BackgroundBuild,
    BackgroundBuildError,
    available_in_background,
    busy,
    spare_core,
)
from fastchgnet.compile.size_guard import SizeGuard
from fastchgnet.compile.trace import (
    Program,
    batch_inputs,
    model_state,
    rebuild,
    short_bonds_input,
    trace_program,
)
from fastchgnet.data.batch import GraphBatch
from fastchgnet.data.labels import LabelBatch
from fastchgnet.model.potential import frozen

if TYPE_CHECKING:
    from fastchgnet.compile.capture import CaptureStats
    from fastchgnet.compile.store import ScriptShelf

log = logging.getLogger("fastchgnet.compile")


def script_graph(graph_module: fx.GraphModule) -> torch.jit.ScriptModule:
    """``graph_module`` (a ``trace.trace_program`` graph; changed in place) as a TorchScript
    module with the same inputs and outputs.

    Repeated computations are merged first (``fx_graph_cse``, the pass AOTAutograd runs on
    the graphs it hands to inductor; make_fx's trace has not had it, and TorchScript runs every
    node): the LiMnO2 MD graph drops from 1201 to 1120 ops, the same outputs to the bit.
    TorchScript resolves an op by its schema, so each node's overload (``aten.add.Tensor``)
    becomes its packet (``aten.add``), and devices in keyword arguments become their names
    with the index ("cuda:1"), which TorchScript converts back to devices."""
    from torch._functorch.compile_utils import fx_graph_cse, strip_overloads

    if not available():
        raise RuntimeError(
            f"TorchScript is not available with torch {torch.__version__} on Python "
            f"{sys.version_info.major}.{sys.version_info.minor}: use the inductor capture"
        )
    merged = fx_graph_cse(graph_module.graph)
    merged._codegen = graph_module.graph._codegen  # the trace's input and output handling
    graph_module.graph = merged
    graph_module.graph.eliminate_dead_code()
    strip_overloads(graph_module)
    for node in graph_module.graph.nodes:
        if any(isinstance(value, torch.device) for value in node.kwargs.values()):
            node.kwargs = {
                key: str(value) if isinstance(value, torch.device) else value
                for key, value in node.kwargs.items()
            }
    graph_module.recompile()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", "The TorchScript type system", UserWarning)
        return torch.jit.script(graph_module)


def available() -> bool:
    """Whether TorchScript can be used here: this torch still has ``torch.jit.script``, and
    Python is older than 3.14 (torch does not support TorchScript on 3.14 and later)."""
    return sys.version_info < (3, 14) and callable(getattr(torch.jit, "script", None))


#: More graphs than this for one program is logged as a warning: the guards hold only sizes
#: of 0 or 1 apart (a structure, short bond or angle count of 0 or 1), so a run that keeps
#: building means a size the model turned into a constant.
WARN_GRAPHS = 4


class ScriptedProgram:
    """A program run by TorchScript on inputs of any sizes: TorchScript graphs of
    ``free_counts`` traces, each with its ``SizeGuard``.

    Every graph is counted in ``stats`` (``graphs``; its seconds in ``compile_seconds``, or in
    ``background_seconds`` when built in the background). With ``eager``, builds run in a
    forked child (``background.BackgroundBuild``, where ``available_in_background``): a call no
    graph holds for starts one (if no child of this process builds: another program's child
    would share its core) and is answered by ``eager``, and the first call after the child is
    done loads its graph.

    Args:
        trace: the ``free_counts`` trace of the program at these graph inputs.
        inputs: the first call's graph inputs; its graph is built (or started) here.
        stats: the capture's counts.
        free_from: the first input whose first size is free (the model's state comes first).
        eager: the program run eagerly on graph inputs (None: every build in place).
        shelf: where the graphs are kept on disk (``store.ScriptShelf``): its graphs are
            loaded first, and each new one is kept there (None: in memory only).
    """

    def __init__(
        self,
        trace: Callable[[Sequence[Tensor]], fx.GraphModule],
        inputs: Sequence[Tensor],
        stats: CaptureStats,
        free_from: int,
        eager: Callable[[Sequence[Tensor]], tuple] | None = None,
        shelf: ScriptShelf | None = None,
    ) -> None:
        self._trace = trace
        self._shelf = shelf
        self._free_from = free_from
        self._stats = stats
        self._eager = eager if eager is not None and available_in_background() else None
        self.graphs: list[tuple[SizeGuard, torch.jit.ScriptModule]] = []
        self.pending: BackgroundBuild | None = None
        self._load_shelf()
        if self.holds(inputs):
            return  # a kept graph holds: no build
        if self._eager is None:
            self._add(inputs)
        elif not busy():  # one child at a time: a later call starts it
            self._start(inputs)

    def _built(self, inputs: Sequence[Tensor]) -> tuple[SizeGuard, bytes]:
        """A graph for ``inputs`` and its guard, the graph saved (``torch.jit.save``)."""
        guard, graph = self._new_graph(inputs)
        return guard, _saved(graph)

    def _new_graph(self, inputs: Sequence[Tensor]) -> tuple[SizeGuard, torch.jit.ScriptModule]:
        traced = self._trace(inputs)
        guard = SizeGuard(traced, self._free_from)
        if not guard(inputs):
            raise RuntimeError(f"a TorchScript graph's guard rejects its own inputs: {guard.text}")
        return guard, script_graph(traced)

    def _add(self, inputs: Sequence[Tensor]) -> torch.jit.ScriptModule:
        start = time.perf_counter()
        guard, graph = self._new_graph(inputs)
        seconds = time.perf_counter() - start
        self._keep(guard, graph, seconds, in_child=False)
        if self._shelf is not None:
            self._shelf.keep(guard, _saved(graph), seconds)
        return graph

    def _load_shelf(self) -> None:
        """Load the graphs kept on the shelf (counted in ``stats.loaded``, ``load_seconds``)."""
        if self._shelf is None:
            return
        start = time.perf_counter()
        for guard, saved, _ in self._shelf.graphs():
            try:
                self.graphs.append((guard, _loaded(saved)))
            except Exception as exc:  # a graph this torch cannot load is built again
                log.warning("a kept TorchScript graph did not load (%s): skipped", exc)
                continue
            self._stats.loaded += 1
        if self.graphs:
            self._stats.load_seconds += time.perf_counter() - start
            log.info("%d TorchScript graph(s) (any sizes) loaded from %s in %.2f s",
                     len(self.graphs), self._shelf.folder, time.perf_counter() - start)  # fmt: skip

    def _keep(
        self, guard: SizeGuard, graph: torch.jit.ScriptModule, seconds: float, in_child: bool
    ) -> None:
        self.graphs.append((guard, graph))
        self._stats.graphs += 1
        if in_child:
            self._stats.background_seconds += seconds
        else:
            self._stats.compile_seconds += seconds
        where = " in the background" if in_child else ""
        log.info("graph %d (TorchScript, any sizes): built%s in %.1f s", self._stats.graphs,
                 where, seconds)  # fmt: skip
        if len(self.graphs) > WARN_GRAPHS:
            log.warning(
                "%d TorchScript graphs for one program: batch sizes keep breaking the guards "
                "(the last: %s)",
                len(self.graphs),
                guard.text,
            )

    def _collect(self, wait: bool = False) -> None:
        """Keep the background build's graph if it is done (``wait``: wait for it). A build
        that failed is logged, and builds then run in place (raising where they fail)."""
        if self.pending is None:
            return
        try:
            built = self.pending.wait() if wait else self.pending.poll()
        except BackgroundBuildError as error:
            log.warning("background TorchScript build failed (%s): building in place", error)
            self.pending, self._eager = None, None
            return
        if built is not None:
            guard, saved = built
            seconds = self.pending.seconds or 0.0
            self._keep(guard, _loaded(saved), seconds, in_child=True)
            self.pending = None
            if self._shelf is not None:
                self._shelf.keep(guard, saved, seconds)

    def holds(self, inputs: Sequence[Tensor]) -> bool:
        """Whether a graph this process holds serves ``inputs`` (its guard holds)."""
        return any(guard(inputs) for guard, _ in self.graphs)

    def wait(self) -> None:
        """Wait for a background build, if one runs, and keep its graph."""
        self._collect(wait=True)

    def cancel(self) -> None:
        """Stop a background build that still runs (a later call without a graph starts
        another); one that is done is kept first."""
        self._collect()
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None

    def __call__(self, *inputs: Tensor) -> tuple:
        """The program's outputs for ``inputs`` (the graph inputs).

        TorchScript's executor runs the graphs without its profiling runs and optimisation
        passes: a traced graph is already flat aten, and on the LiMnO2 MD graph those cost the
        first three calls 0.44 s (58, 357 and 41 ms against 17-25 ms) and gained nothing
        after (7.42-7.63 ms per MD step with them, 7.42-7.51 ms without), measured on a CPU,
        where the compile decision offers TorchScript; on CUDA this also leaves out
        TorchScript's fuser. The setting is the calling thread's own, restored after."""
        with torch.jit.optimized_execution(False):
            return self._call(inputs)

    def _call(self, inputs: Sequence[Tensor]) -> tuple:
        self._collect()
        graph = next((graph for guard, graph in self.graphs if guard(inputs)), None)
        if graph is None and self._eager is None:
            return self._add(inputs)(*inputs)
        if graph is None and self.pending is None and not busy():
            self._start(inputs)
            if self._eager is None:  # no child could start: built here
                return self._add(inputs)(*inputs)
        with spare_core() if busy() else contextlib.nullcontext():  # a child has a core
            return graph(*inputs) if graph is not None else self._eager(inputs)

    def _start(self, inputs: Sequence[Tensor]) -> None:
        log.info("building a TorchScript graph in a child process; calls run eagerly meanwhile")
        try:  # the child traces at this process's thread count, as the graph will run
            built = BackgroundBuild(lambda: self._built(inputs), torch.get_num_threads())
        except BackgroundBuildError as error:
            log.warning("%s: building in place", error)
            self._eager = None
            return
        self.pending = built


def _saved(graph: torch.jit.ScriptModule) -> bytes:
    """``graph`` as ``torch.jit.save`` writes it (``_loaded`` reads it back)."""
    saved = io.BytesIO()
    torch.jit.save(graph, saved)
    return saved.getvalue()


def _loaded(saved: bytes) -> torch.jit.ScriptModule:
    """The TorchScript module ``torch.jit.save`` wrote as ``saved``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
        return torch.jit.load(io.BytesIO(saved))


def scripted_program(
    model: torch.nn.Module,
    program: Program,
    batch: GraphBatch,
    labels: LabelBatch | None,
    stats: CaptureStats,
    in_background: bool = False,
    shelf: ScriptShelf | None = None,
) -> ScriptedProgram:
    """``program`` of ``model`` as a ``ScriptedProgram``, its first graph built (or, with
    ``in_background``, started in a child while calls run eagerly) for ``batch`` (and
    ``labels``) unless one kept on ``shelf`` holds for it; it takes
    ``model_state(model)[1] + batch_inputs(batch, labels) + [short_bonds_input(batch)]``."""
    state, with_labels = model_state(model)[1], labels is not None
    n_state = len(state)

    parameters = list(model.parameters())

    def rebuilt(inputs: Sequence[Tensor]) -> tuple[GraphBatch, LabelBatch | None]:
        return rebuild(inputs[n_state:-1], inputs[-1].shape[0], with_labels)

    def trace(inputs: Sequence[Tensor]) -> fx.GraphModule:
        return trace_program(model, program, *rebuilt(inputs), free_counts=True)

    def eager(inputs: Sequence[Tensor]) -> tuple:
        """The program run eagerly, answering as the graph does: under no_grad with the
        weights frozen (as ``EagerPotential`` runs) and outputs without autograd history."""
        if torch.is_grad_enabled():
            return program(model, *rebuilt(inputs))
        with frozen(parameters):
            outputs = program(model, *rebuilt(inputs))
        return tuple(None if output is None else output.detach() for output in outputs)

    inputs = [*state, *batch_inputs(batch, labels), short_bonds_input(batch)]
    return ScriptedProgram(trace, inputs, stats, n_state, eager if in_background else None, shelf)
