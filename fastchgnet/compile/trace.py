"""Trace a model call for one batch shape (or, symbolically, any sizes) into a flat aten graph
(make_fx).

Conservative forces are ``autograd.grad`` of the energy inside ``forward``; torch.compile's
AOTAutograd cannot differentiate through a compiled region twice. ``make_fx`` runs the call
once and records every aten op dispatched below autograd, the derivative ops of -dE/dx and
dE/dstrain included, so the traced graph computes energy, forces and stress as plain forward
ops. Compiling that graph, the weight update needs only a first-order backward of it.

The autograd engine saves some forward outputs (sigmoid, norm) as detached tensors; in the
trace they appear as ``aten.detach`` feeding the derivative ops, which would cut the weight
gradient of a force loss. ``strip_detach`` removes them: our model never detaches on purpose,
so every detach in the trace is the engine's (tested: traced weight gradients equal eager).

Parameters and buffers are graph inputs (``torch.func.functional_call``), so the trained
parameters receive gradients and a weight update needs no retrace.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import fields

import torch
from torch import Tensor, fx, nn
from torch.fx.experimental.proxy_tensor import make_fx

from fastchgnet.data.batch import FIELDS, GraphBatch
from fastchgnet.data.labels import LABEL_FIELDS, LabelBatch

#: GraphBatch tensor fields in graph-input order (``n_short_bonds`` is baked into a trace, or
#: with ``free_counts`` read from ``short_bonds_input``).
BATCH_TENSORS: tuple[str, ...] = tuple(
    f.name for f in fields(GraphBatch) if f.name != "n_short_bonds"
)
#: LabelBatch fields in graph-input order.
LABEL_TENSORS: tuple[str, ...] = tuple(f.name for f in fields(LabelBatch))

#: Graph inputs whose first size counts atoms, bonds or angles: the sizes a dynamic-size trace
#: keeps symbolic (every other size, the model's state included, stays a constant).
ENTRY_SIZED = frozenset(
    name for name, (_, level, _) in {**FIELDS, **LABEL_FIELDS}.items() if level != "structure"
)

#: A model call on a batch (and labels): returns a tuple of tensors (None allowed).
Program = Callable[[nn.Module, GraphBatch, LabelBatch | None], tuple[Tensor | None, ...]]


def batch_inputs(batch: GraphBatch, labels: LabelBatch | None = None) -> list[Tensor]:
    """The batch's (and labels') tensors in ``BATCH_TENSORS`` (+ ``LABEL_TENSORS``) order."""
    flat = [getattr(batch, name) for name in BATCH_TENSORS]
    if labels is not None:
        flat += [getattr(labels, name) for name in LABEL_TENSORS]
    return flat


def rebuild(
    flat: Sequence[Tensor], n_short_bonds: int, with_labels: bool
) -> tuple[GraphBatch, LabelBatch | None]:
    """Inverse of ``batch_inputs``."""
    n = len(BATCH_TENSORS)
    batch = GraphBatch(
        **dict(zip(BATCH_TENSORS, flat[:n], strict=True)), n_short_bonds=n_short_bonds
    )
    labels = None
    if with_labels:
        labels = LabelBatch(**dict(zip(LABEL_TENSORS, flat[n:], strict=True)))
    return batch, labels


def model_state(model: nn.Module) -> tuple[list[str], list[Tensor]]:
    """Names and tensors of every parameter then every buffer, as ``named_parameters`` and
    ``named_buffers`` list them (the traced graph's first inputs)."""
    reader = StateReader(model)
    return reader.names, reader()


class StateReader:
    """``model_state(model)[1]`` for every call of a captured program, in about 20 us against
    about 215 us: the (module, name) slots of the parameters then the buffers are found once
    (the order and de-duplication of ``named_parameters`` / ``named_buffers``; ``names`` are
    theirs), and each call reads the tensors now in those slots (a parameter replaced in its
    module is read too)."""

    def __init__(self, model: nn.Module) -> None:
        self.slots: list[tuple[dict, str]] = []
        self.names: list[str] = []
        for kind in ("_parameters", "_buffers"):
            seen: set[int] = set()
            for prefix, module in model.named_modules():
                for name, tensor in getattr(module, kind).items():
                    if tensor is not None and id(tensor) not in seen:
                        seen.add(id(tensor))
                        self.slots.append((getattr(module, kind), name))
                        self.names.append(f"{prefix}.{name}" if prefix else name)

    def __call__(self) -> list[Tensor]:
        return [slots[name] for slots, name in self.slots]


def strip_detach(graph_module: fx.GraphModule) -> int:
    """Replace every ``aten.detach`` by its input; returns how many were removed."""
    removed = 0
    for node in list(graph_module.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.detach.default:
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
            removed += 1
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    return removed


def trace_program(
    model: nn.Module,
    program: Program,
    batch: GraphBatch,
    labels: LabelBatch | None = None,
    *,
    symbolic: bool = False,
    free_counts: bool = False,
) -> fx.GraphModule:
    """Trace ``program(model, batch, labels)`` for this batch's shapes into an aten graph.

    The graph's inputs are ``model_state(model)[1] + batch_inputs(batch, labels)``; its outputs
    ``program``'s tuple (None outputs stay None). Tracing runs on fake tensors (no compute).
    ``symbolic``: the first size of every per-atom, per-bond and per-angle input stays a
    symbol (``entry_sized``), so one graph serves batches of other sizes; the model's widths,
    the structure count and ``n_short_bonds`` stay constants, as inductor's kernels want them.
    ``free_counts`` (implies ``symbolic``): the structure count and ``n_short_bonds`` are
    symbols too, the latter read from one more input, ``short_bonds_input(batch)``; sizes of
    0 or 1 still become constants, and the graph's ``shape_env.guards`` say for which sizes
    it holds (``size_guard.SizeGuard`` checks them per call).
    """
    names, state = model_state(model)
    n_state = len(names)
    n_short_bonds = batch.n_short_bonds
    with_labels = labels is not None

    runner = _ProgramModule(model, program)

    def flat_program(*flat: Tensor) -> tuple[Tensor | None, ...]:
        values = {f"model.{name}": value for name, value in zip(names, flat[:n_state], strict=True)}
        if free_counts:
            rest, short = flat[n_state:-1], flat[-1].shape[0]
        else:
            rest, short = flat[n_state:], n_short_bonds
        graph_batch, graph_labels = rebuild(rest, short, with_labels)
        return torch.func.functional_call(runner, values, (graph_batch, graph_labels))

    symbolic = symbolic or free_counts
    mode = "symbolic" if symbolic else "fake"
    inputs = [*state, *batch_inputs(batch, labels)]
    if free_counts:
        inputs.append(short_bonds_input(batch))
    if symbolic:
        free = [True] * (len(inputs) - n_state) if free_counts else entry_sized(with_labels)
        inputs = _symbolic_inputs(inputs, [False] * n_state + free)
    traced = make_fx(flat_program, tracing_mode=mode, _allow_non_fake_inputs=True)(*inputs)
    strip_detach(traced)
    return traced


def short_bonds_input(batch: GraphBatch) -> Tensor:
    """An empty (n_short_bonds, 0) tensor: how a ``free_counts`` graph takes ``n_short_bonds``
    (its last input), as a size it reads, not a constant traced in."""
    return batch.lattice.new_empty((batch.n_short_bonds, 0))


def shape_key(batch: GraphBatch, labels: LabelBatch | None) -> tuple:
    """Everything a traced graph is specialised on: shapes, dtypes, device, n_short_bonds."""
    flat = batch_inputs(batch, labels)
    return (
        tuple(tuple(t.shape) for t in flat),
        tuple(t.dtype for t in flat),
        flat[0].device,
        batch.n_short_bonds,
    )


def entry_sized(with_labels: bool) -> list[bool]:
    """Per batch input (``batch_inputs`` order): whether its first size is a count of atoms,
    bonds or angles (``ENTRY_SIZED``)."""
    names = BATCH_TENSORS + (LABEL_TENSORS if with_labels else ())
    return [name in ENTRY_SIZED for name in names]


def mark_entry_sizes(flat_batch: Sequence[Tensor], with_labels: bool) -> None:
    """Tell torch.compile which sizes of these batch inputs (``batch_inputs`` order) vary
    (``entry_sized``): it compiles its first call with those sizes symbolic and every other
    size fixed, as ``trace_program(symbolic=True)`` traced them."""
    import torch._dynamo

    for tensor, symbolic in zip(flat_batch, entry_sized(with_labels), strict=True):
        if symbolic:
            torch._dynamo.maybe_mark_dynamic(tensor, 0)


def _symbolic_inputs(inputs: list[Tensor], first_symbolic: list[bool]) -> list[Tensor]:
    """Fake copies of ``inputs`` in one symbolic fake mode: the first size a symbol of its own
    where ``first_symbolic`` says so (no duck sizing), every other size fixed."""
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import (
        DimDynamic,
        ShapeEnv,
        StatelessSymbolicContext,
    )

    mode = FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv(duck_shape=False))
    fakes = []
    for k, (tensor, symbolic) in enumerate(zip(inputs, first_symbolic, strict=True)):
        sizes = [DimDynamic.STATIC] * tensor.dim()
        if symbolic and tensor.dim():
            sizes[0] = DimDynamic.DYNAMIC
        context = StatelessSymbolicContext(dynamic_sizes=sizes)
        source = ConstantSource(f"input{k}")
        fakes.append(mode.from_tensor(tensor, source=source, symbolic_context=context))
    return fakes


#: torch 2.13's inductor deep-copies each graph (``wrap_compiler_debug``), whose pytree specs
#: are of a class torch itself deprecated: every compile warned "isinstance(treespec,
#: LeafSpec) is deprecated" (copyreg.py:105), nothing a user can act on
TORCH_NOISE = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """Within the block torch's ``TORCH_NOISE`` warning is not shown (where a compile runs:
    a graph's build and its first, compiling call)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", TORCH_NOISE, FutureWarning)
        yield


def graph_bytes(graph_module: fx.GraphModule) -> bytes:
    """``graph_module`` (its code and tensor constants) as bytes for ``graph_from_bytes``;
    a symbolic trace's ``shape_env`` (not picklable, rebuilt by torch.compile) is left out."""
    shape_env = graph_module.__dict__.pop("shape_env", None)
    try:
        body = io.BytesIO()
        torch.save(graph_module, body)
    finally:
        if shape_env is not None:
            graph_module.shape_env = shape_env
    return body.getvalue()


def graph_from_bytes(data: bytes) -> fx.GraphModule:
    """The graph module ``graph_bytes`` wrote (it runs the graph's generated code: read only
    bytes this package wrote, as ``store.stored_trace`` does)."""
    # reading re-traces the code with FX, whose proxy checks this module (inductor imports it)
    import torch._higher_order_ops.triton_kernel_wrap

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def separate_sizes() -> AbstractContextManager:
    """Symbolic shapes without "duck sizing" within the block: every input size gets its own
    symbol. Duck sizing gives equal sizes one symbol, so a batch of 64 atoms would share the
    symbol of a 64-wide weight and be fixed at 64 with it."""
    import torch.fx.experimental._config as shapes_config

    return shapes_config.patch(use_duck_shape=False)


class _ProgramModule(nn.Module):
    """``program`` as a module call, so ``functional_call`` can swap the model's state."""

    def __init__(self, model: nn.Module, program: Program):
        super().__init__()
        self.model = model
        self.program = program

    def forward(self, batch: GraphBatch, labels: LabelBatch | None) -> tuple[Tensor | None, ...]:
        return self.program(self.model, batch, labels)
