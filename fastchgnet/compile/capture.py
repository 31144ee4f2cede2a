"""CapturedModel: one compiled graph per fixed batch shape, for prediction and training.

A padded batch (``data.padding.collate_padded``) has the shapes of its capacity bucket. The
first call with a new shape traces the model call into an aten graph (``trace.trace_program``:
conservative forces and stress become plain forward ops) and compiles it with
``torch.compile(fullgraph=True, dynamic=False)``; later calls of that shape reuse it. Each
bucket has its own graph module, so buckets never count against dynamo's recompile limit.
On CUDA, ``cuda_graphs=True`` (default there) compiles with mode "reduce-overhead": the
graph (and its backward) is replayed as a CUDA graph (``cudagraph_mark_step_begin`` per call).
``eager=True`` runs the model as it is; ``backend="torchscript"`` runs the trace by TorchScript
for batches of any size (``compile.script.ScriptedProgram``; ``background``: in a child).

With ``dynamic=True`` the graph is traced with symbolic sizes of atoms, bonds and angles
(``trace.entry_sized``) and compiled for any such size (``trace.mark_entry_sizes``): one graph
serves padded batches that share structure and short-bond counts (``data.capacity.fitted``).
CPU training runs so: at one capacity packed batches of 16 carried 42 % padding and a step
took 2444 against 1880 ms fitted (1.30x, 2 threads). Inductor's C++ sums guard on their length
(a cascade above 4096 terms); the first call builds them unguarded
(``kernel_groups.unguarded_sum_lengths``), so the graph never recompiles for a size. The
symbolic trace (4.3 s of a warm start at batch 16) is kept in the store and read back in later
processes (``store.stored_trace``; the store of ``train.step.training_capture``).
With a ``store`` (``fastchgnet.compile.store.CompiledStore``), a CPU prediction graph without
gradients is compiled ahead of time (AOTInductor) and kept on disk: a later process with the
same config and shape loads it in well under a second instead of tracing and compiling again.
Every new graph is logged (``fastchgnet.compile``); ``stats`` counts dynamo's frames too."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fastchgnet.compile.programs import (
    FEATURE_OUTPUTS,
    PREDICTION_OUTPUTS,
    loss_program,
    predict_program,
)
from fastchgnet.compile.store import (
    CompiledStore,
    ScriptShelf,
    program_key,
    stored_trace,
    use_persistent_inductor_cache,
)
from fastchgnet.compile.stored import program_from_store
from fastchgnet.compile.trace import (
    Program,
    StateReader,
    batch_inputs,
    mark_entry_sizes,
    model_state,
    quiet_torch,
    separate_sizes,
    shape_key,
    short_bonds_input,
    trace_program,
)
from fastchgnet.data.batch import GraphBatch
from fastchgnet.data.labels import LabelBatch
from fastchgnet.model.chgnet import Prediction
from fastchgnet.model.loss import LossConfig

log = logging.getLogger("fastchgnet.compile")

#: Inductor options of CPU graphs: its defaults, C++ kernels on every torch thread. Before stop
#: 23 they ran on one (``{"cpp.threads": 1}``): on several, inductor made every scatter-add
#: per-element atomic adds, slower at 2 threads than at 1 (issue #14). On several threads the
#: model now writes gathers and scatter sums in the expanded-index form
#: (``model.layers.parallel_cpu``), which inductor hands to aten's atomic-free parallel kernel
#: (tests/compile/test_cpu_threads.py): the conservative step at 2 threads is 1.16x faster
#: (bench/bench_kernel_threads.py).
CPU_INDUCTOR_OPTIONS: dict = {}
#: ...and of the ahead-of-time packages: the C++ wrapper that calls the kernels (one long
#: function) is built at -O0, not -O1 (kernels keep -O3). It took 10.2 of a 38 s cold build of
#: the LiMnO2 MD graph, now 5.7 s; calls measured the same (9.8 ms, bench/bench_compile.py).
CPU_PACKAGE_OPTIONS = CPU_INDUCTOR_OPTIONS | {"aot_inductor.compile_wrapper_opt_level": "O0"}
#: AOTAutograd's activation memory budget for CPU graphs of a conservative model with
#: gradients (training): the fraction of the forward's activations the backward may keep; the
#: rest (cheap pointwise results of the force derivative) is recomputed in the backward. The
#: step's kernels are memory-bound on a CPU, so recomputing beats storing and reloading. At
#: 0.5, batch 16: 13-15% faster per step and peak 651 -> 500 MiB; batch 32: 1.12x, 1132 -> 882
#: MiB (bench/bench_train_step.py). Direct graphs measured slower with it (1.14x), and GPUs
#: are not measured: both keep the default (1.0, keep everything the min-cut wants).
CPU_CONSERVATIVE_ACTIVATION_BUDGET = 0.5


@dataclass
class CaptureStats:
    """Graphs built in this process (those loaded from the on-disk store count in ``loaded``
    only, in ``load_seconds``), seconds spent tracing and compiling the built (a new training
    graph's first backward too; in a child while calls ran eagerly: ``background_seconds``)."""

    graphs: int = 0
    compile_seconds: float = 0.0
    background_seconds: float = 0.0
    loaded: int = 0
    load_seconds: float = 0.0
    keys: list[tuple] = field(default_factory=list)
    frames_at_start: int = 0

    @property
    def dynamo_frames(self) -> int:
        """Frames dynamo compiled since this CapturedModel was made (all models in process)."""
        return _dynamo_frames() - self.frames_at_start

    @property
    def recompiles(self) -> int:
        """Compiled frames beyond one per graph: recompiles after guard failures."""
        return max(self.dynamo_frames - self.graphs, 0)


def _dynamo_frames() -> int:
    """Frames dynamo compiled in this process; 0 before it is imported (not imported here)."""
    utils = sys.modules.get("torch._dynamo.utils")
    return 0 if utils is None else int(utils.counters["stats"]["unique_graphs"])


class CapturedModel:
    """Compiled (or eager) prediction and training loss of a FastCHGNet for padded batches.

    Args:
        model: the model (any mode); its parameters stay its own and are trained in place.
        loss_config: the training loss (``fastchgnet.model.loss.LossConfig``; default: its
            defaults, the paper's Huber loss with prefactors 2, 1.5, 0.1, 0.1).
        backend: torch.compile backend ("inductor"; "aot_eager" for cheap tests), or
            "torchscript": the trace run by TorchScript (``compile.script``; any sizes).
        eager: run without trace or compile (the reference for "compiled equals eager").
        cuda_graphs: replay as CUDA graphs ("reduce-overhead"); default: on for CUDA inputs.
        compute_forces, compute_stress, features: what the programs predict (``features``:
            atom and crystal features too, prediction only).
        store: keep CPU prediction graphs (no gradients, inductor) compiled ahead of time in
            this on-disk store and load them from there, TorchScript graphs
            (``store.ScriptShelf``) and dynamic-size traces (None: build in memory each
            process).
        dynamic: one graph for batches of any atoms, bonds and angles that share structure
            and short-bond counts (see the module docstring; no CUDA graphs).
        background: TorchScript builds in a child process, calls eager meanwhile (``script``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        loss_config: LossConfig | None = None,
        backend: str = "inductor",
        eager: bool = False,
        cuda_graphs: bool | None = None,
        compute_forces: bool = True,
        compute_stress: bool = True,
        features: bool = False,
        store: CompiledStore | None = None,
        dynamic: bool = False,
        background: bool = False,
    ):
        if dynamic and backend == "torchscript":
            raise ValueError("backend='torchscript' takes any sizes already: leave dynamic off")
        self.model, self.store, self.backend, self.eager = model, store, backend, eager
        self.dynamic, self.background, self.cuda_graphs = dynamic, background, cuda_graphs
        self.loss_config = loss_config or LossConfig()
        self.compute_forces, self.compute_stress = compute_forces, compute_stress
        self.features = features
        self.stats = CaptureStats(frames_at_start=_dynamo_frames())
        self._state = StateReader(model)  # the graphs' first inputs, read every call
        self._compiled: dict[tuple, object] = {}
        self._shelves: dict[tuple, ScriptShelf] = {}
        self._trace_seconds = 0.0

    # ------------------------------------------------------------------ public
    def predict(self, batch: GraphBatch) -> Prediction:
        """Energy (S,) eV/atom, forces (N, 3) eV/Å, stress (S, 3, 3) GPa, magmoms (N,) μB;
        keeps the autograd graph when grad is enabled (training), none under no_grad."""
        outputs = self._run("predict", batch, None)
        names = PREDICTION_OUTPUTS + (FEATURE_OUTPUTS if self.features else ())
        return Prediction(**dict(zip(names, outputs, strict=True)))

    def loss(self, batch: GraphBatch, labels: LabelBatch) -> tuple[Tensor, Prediction]:
        """Training loss (0-d, differentiable w.r.t. the model's parameters) and prediction."""
        loss, *outputs = self._run("loss", batch, labels)
        return loss, Prediction(**dict(zip(PREDICTION_OUTPUTS, outputs, strict=True)))

    # ---------------------------------------------------------------- internals
    def _program(self, kind: str) -> Program:
        if kind == "predict":
            return predict_program(self.compute_forces, self.compute_stress, self.features)
        return loss_program(self.loss_config, self.compute_forces, self.compute_stress)

    def _use_cuda_graphs(self, batch: GraphBatch) -> bool:
        on_cuda = batch.lattice.is_cuda and torch.cuda.is_available() and not self.dynamic
        return on_cuda if self.cuda_graphs is None else bool(self.cuda_graphs and on_cuda)

    def _run(self, kind: str, batch: GraphBatch, labels: LabelBatch | None) -> tuple:
        program = self._program(kind)
        if self.eager:
            return program(self.model, batch, labels)
        key = self._key(kind, batch, labels)
        compiled = self._compiled.get(key)
        if compiled is None:
            with quiet_torch():
                compiled = self._build(key, program, batch, labels)
        if self._use_cuda_graphs(batch) and self.backend == "inductor":
            torch.compiler.cudagraph_mark_step_begin()
        state = self._state()
        flat = self._flat_inputs(batch, labels)
        start = time.perf_counter() if key not in self.stats.keys else None
        if start is not None and self.dynamic:
            mark_entry_sizes(flat, labels is not None)
        with self._first_call_options(batch) if start is not None else contextlib.nullcontext():
            outputs = compiled(*state, *flat)
        if start is not None:  # the first call compiles (torch.compile is lazy)
            self.stats.compile_seconds += time.perf_counter() - start
            self.stats.keys.append(key)
            log.info(
                "graph %d (%s, grad=%s, train=%s, shapes %s): compiled in %.1f s",
                self.stats.graphs,
                *key[:3],
                key[3][:1],
                self._trace_seconds + time.perf_counter() - start,
            )
        return tuple(outputs)

    def _first_call_options(self, batch: GraphBatch) -> contextlib.ExitStack:
        """The first (compiling) call's settings: ``_partitioner_options``, and ``separate_sizes``
        (with inductor ``unguarded_sum_lengths``) for dynamic sizes."""
        stack = contextlib.ExitStack()
        stack.enter_context(quiet_torch())
        stack.enter_context(self._partitioner_options(batch))
        if self.dynamic:
            stack.enter_context(separate_sizes())
            if self.backend == "inductor":
                from fastchgnet.compile.kernel_groups import unguarded_sum_lengths

                stack.enter_context(unguarded_sum_lengths())
        return stack

    def _partitioner_options(self, batch: GraphBatch) -> contextlib.AbstractContextManager:
        """AOTAutograd's settings for the first call, which compiles: for a conservative model's
        CPU graphs with gradients, ``CPU_CONSERVATIVE_ACTIVATION_BUDGET``."""
        import torch._functorch.config as functorch_config

        conservative = getattr(self.model, "direct_heads", None) is None
        if (
            conservative
            and torch.is_grad_enabled()
            and batch.lattice.device.type == "cpu"
            and self.backend == "inductor"
        ):
            return functorch_config.patch(
                activation_memory_budget=CPU_CONSERVATIVE_ACTIVATION_BUDGET
            )
        return contextlib.nullcontext()

    def cancel_builds(self) -> None:
        """Stop the builds still running in child processes (``background``)."""
        for program in self._compiled.values():
            if hasattr(program, "cancel"):  # a ScriptedProgram
                program.cancel()

    def is_compiled(self, batch: GraphBatch, kind: str = "predict") -> bool:
        """Whether this process already holds the compiled ``kind`` program for ``batch``'s
        shape (in the current grad and train modes); TorchScript: a graph whose guard holds
        for ``batch``'s sizes, or a build of one under way."""
        program = self._compiled.get(self._key(kind, batch, None))
        if program is None or not hasattr(program, "holds"):  # a ScriptedProgram has guards
            return program is not None
        # a build under way in a child costs the calls nothing more (they run eagerly)
        return program.pending is not None or program.holds(self._graph_inputs(batch))

    def _flat_inputs(self, batch: GraphBatch, labels: LabelBatch | None) -> list[Tensor]:
        """A compiled program's inputs after the model's state (TorchScript: then short bonds)."""
        flat = batch_inputs(batch, labels)
        return [*flat, short_bonds_input(batch)] if self.backend == "torchscript" else flat

    def _graph_inputs(self, batch: GraphBatch) -> list[Tensor]:
        """A prediction graph's inputs for ``batch``: the model's state, then the batch's."""
        return [*self._state(), *self._flat_inputs(batch, None)]

    def has_stored_graph(self, batch: GraphBatch) -> bool:
        """Whether the store keeps a TorchScript graph whose guard holds for ``batch``'s
        prediction in this grad mode (as this capture's shelf read it, with what it kept)."""
        if self.backend != "torchscript" or self.store is None or self.eager:
            return False
        shelf = self._shelf(self._key("predict", batch, None))
        inputs = self._graph_inputs(batch)
        return any(guard(inputs) for guard, _, _ in shelf.graphs())

    def _shelf(self, key: tuple) -> ScriptShelf | None:
        """``key``'s TorchScript shelf (None: no store), one per key: decision and build use it."""
        if self.store is None:
            return None
        about = self._about(key)
        place = (key, about["parallel_gathers"])  # the rest of _about is fixed per capture
        if place not in self._shelves:  # made once: a shelf digests its description
            self._shelves[place] = ScriptShelf(self.store, about)
        return self._shelves[place]

    def _key(self, kind: str, batch: GraphBatch, labels: LabelBatch | None) -> tuple:
        """What picks a compiled program in this process: kind, grad and train modes, the
        shapes (``dynamic``: ranks and structure count; TorchScript: ranks), and the
        model's arithmetic (``FastCHGNet.precision``, traced into the graph)."""
        mode = (kind, torch.is_grad_enabled(), self.model.training)
        shapes, *rest = shape_key(batch, labels)
        if self.backend == "torchscript":  # any sizes, n_short_bonds too (``ScriptedProgram``)
            shapes, rest = tuple(len(shape) for shape in shapes), rest[:-1]
        elif self.dynamic:
            shapes = (batch.lattice.shape[0], tuple(len(shape) for shape in shapes))
        return (*mode, shapes, *rest, self._precision())

    def _about(self, key: tuple) -> dict:
        """What a dynamic-size trace for ``key`` depends on beyond the code (``stored_trace``):
        the key, the model's config and state (names, shapes, dtypes, frozen or not), the
        loss, the programs' outputs and the thread count (the gathers' form depends on it)."""
        names, state = model_state(self.model)
        shapes = [(n, t.shape, t.dtype, t.requires_grad) for n, t in zip(names, state, strict=True)]
        return {
            "key": key,
            "config": self.model.config,
            "state": shapes,
            "loss": self.loss_config,
            "outputs": (self.compute_forces, self.compute_stress, self.features),
            "parallel_gathers": torch.get_num_threads() > 1,
        }

    def _precision(self) -> str:
        return getattr(self.model, "precision", "float32")

    def store_key(self, kind: str, batch: GraphBatch, labels: LabelBatch | None) -> str | None:
        """The on-disk store key of this call's program, or None when it would not be stored
        (no store, gradients on, training mode, not CPU, not inductor, or eager)."""
        usable = (
            self.store is not None
            and kind == "predict"
            and not torch.is_grad_enabled()
            and not self.model.training
            and not self.eager
            and not self.dynamic
            and self.backend == "inductor"
            and batch.lattice.device.type == "cpu"
        )
        if not usable:
            return None
        state = self._state()
        name = (
            f"predict(forces={self.compute_forces}, stress={self.compute_stress}, "
            f"features={self.features}, precision={self._precision()})"
        )
        inputs = [*state, *batch_inputs(batch, labels)]
        return program_key(self.model.config, name, inputs, batch.n_short_bonds)

    def _build(
        self, key: tuple, program: Program, batch: GraphBatch, labels: LabelBatch | None
    ) -> object:
        start = time.perf_counter()
        stored = program_from_store(self, key, program, batch, labels, CPU_PACKAGE_OPTIONS)
        if stored is not None:
            return stored
        if self.backend == "torchscript":  # any sizes; counts its own graphs (compile.script)
            from fastchgnet.compile.script import scripted_program

            model, stats, shelf = self.model, self.stats, self._shelf(key)
            built = scripted_program(model, program, batch, labels, stats, self.background, shelf)
            self._compiled[key] = built
            self.stats.keys.append(key)  # its first call is not a compile
            return built
        use_persistent_inductor_cache()
        from fastchgnet.compile.kernel_groups import group_cpu_kernels, while_header_builds

        group_cpu_kernels()  # imports inductor
        make = functools.partial(
            trace_program, self.model, program, batch, labels, symbolic=self.dynamic
        )
        if self.dynamic:  # a trace to make: the build is cold, its header is built meanwhile
            traced = stored_trace(self.store, self._about(key), while_header_builds(make))
        else:
            traced = make()
        cuda_graphs = self._use_cuda_graphs(batch) and self.backend == "inductor"
        mode = "reduce-overhead" if cuda_graphs else None
        options = CPU_INDUCTOR_OPTIONS if self.backend == "inductor" and mode is None else None
        compiled = torch.compile(
            traced,
            backend=self.backend,
            fullgraph=True,
            dynamic=None if self.dynamic else False,  # dynamic: the sizes mark_entry_sizes marks
            mode=mode,
            options=options,
        )
        return self._keep(key, compiled, start)

    def _keep(self, key: tuple, compiled: object, start: float) -> object:
        self._trace_seconds = time.perf_counter() - start  # the build, counted; then kept
        self.stats.compile_seconds += self._trace_seconds
        self.stats.graphs += 1
        self._compiled[key] = compiled
        return compiled
