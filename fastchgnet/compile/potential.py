"""CompiledPotential: the captured model behind the ASE calculator, relaxation and MD.

MD evaluates one structure thousands of times, its bond and angle counts drifting; relaxation
a set of structures, fewer as they converge. Both use a few capacities: the first call picks
one with room (atoms exact + 1 padding atom; short and long bonds ``headroom`` more, angles
``(1 + headroom)^2`` more, rounded up to ``round_to``), later calls the smallest that fits
(one compiled shape a run; converged structures leave empty slots). Angles get the squared
margin (they go as the square of the bond-graph degree: 45 NVT steps at 300 K, LiMnO2's short
bonds +15 %, angles +33 %). A call that fits none grows it: one more compile, logged.

Re-sizing (off by default; ``run_md`` sets ``patience`` and ``max_shapes``, see
``md.dynamics.MD_COMPILE``; ``relax(compiled=True)`` turns all on; prediction keeps one shape).
When the graphs of a call fit a known capacity but a fresh one with headroom
(``data.capacity.shrunk``) would hold at most ``shrink_below`` of its entries, that tighter
capacity is made and used (a relaxation gets cheaper calls as its structures leave). At most
``max_shapes`` capacities are made (growth and shrinks together); a call that would need one
more runs the model eagerly, unpadded, instead of compiling. So does a call whose capacity
holds more than ``max_oversize`` times the entries of a fresh one for it (a compiled call at a
tight capacity: 1.6x faster than eager; 4 structures in a capacity for 16: 1.4-2x slower).
With ``patience``, graphs that fit no capacity run eagerly for that many calls first, and the
capacity then made holds the largest counts seen meanwhile (a relaxation's compressed cells
gain angles fast at first). ``reserve`` sizes one shape for calls known ahead. ``padding``
tallies real and padding entries (atoms + bonds + angles), ``eager_calls`` the eager calls;
short and long bonds pad apart.

On a CPU the programs are compiled ahead of time and kept on disk (``compile.store``): a new
process starts warm. ``expected_compile_seconds`` prices a call first (``compile.decide``).

With ``backend="torchscript"`` none of this applies (``pads`` is False): its graphs take any
sizes (``compile.script.ScriptedProgram``), one build (in a child with ``background``) serves
a run unpadded, and the store keeps it (``store.ScriptShelf``).

There is one ``CapturedModel`` per stress setting (NVT needs none), sharing the capacities.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import fields, replace

import torch
from torch import nn

from fastchgnet.compile.capture import CapturedModel
from fastchgnet.compile.programs import real_part
from fastchgnet.compile.store import (
    SCRIPT_LOAD_SECONDS,
    STORED_SECONDS,
    CompiledStore,
    default_store,
)
from fastchgnet.data.batch import GraphBatch, collate
from fastchgnet.data.capacity import (
    Capacity,
    Counts,
    PaddingTally,
    entries,
    fits,
    peak,
    shrunk,
    with_headroom,
)
from fastchgnet.data.graph import CrystalGraph
from fastchgnet.data.padding import collate_padded
from fastchgnet.model.chgnet import Prediction
from fastchgnet.model.config import ModelConfig
from fastchgnet.model.potential import EagerPotential
from fastchgnet.numerics import flush_denormals

log = logging.getLogger("fastchgnet.compile")


def contiguous(batch: GraphBatch) -> GraphBatch:
    """``batch`` with every tensor C-contiguous. Compiled graphs guard on strides: numpy
    arrays in Fortran order (ASE's scaled positions come from a linear solve) collate into
    transposed tensors, and a later call with C-ordered ones would recompile."""
    changes = {
        f.name: value.contiguous()
        for f in fields(batch)
        if isinstance(value := getattr(batch, f.name), torch.Tensor) and not value.is_contiguous()
    }
    return replace(batch, **changes) if changes else batch


#: ``CompiledPotential.reserve`` sizes one shape for a list of batches when it pads them by at
#: most this fraction of their entries, or when they are this few
RESERVE_PADDING = 0.5
RESERVE_BATCHES = 4


class CompiledPotential:
    """A FastCHGNet run compiled for a few fixed capacities (TorchScript: for any sizes,
    unpadded, ``pads``): a ``Potential`` for prediction, the calculator, relaxation and MD.

    Args:
        model: the model (any mode); put in eval mode here.
        backend: torch.compile backend ("inductor"; "aot_eager" traces the same graph and runs
            it without code generation: for tests), or "torchscript" (the trace run by
            TorchScript, ``compile.script``: a build of seconds, kept in the store for any
            sizes, and calls not padded: ``pads``).
        headroom: fractional margin on bonds (0.2: 20 % more than the first call; angles get
            44 %, see the module docstring).
        round_to: bonds and angles capacities are multiples of this.
        eager: run the same padded programs without trace or compile (for comparisons).
        store: on-disk store of CPU programs compiled ahead of time and of TorchScript
            graphs ("default": the folder ``fastchgnet.compile.store.default_root`` names;
            None: build in memory only).
        shrink_below: make a tighter capacity when one would hold at most this fraction of
            the entries of the smallest known capacity that fits (None: never shrink).
        max_shapes: most capacities (each one compiled graph per program); a call needing
            another runs eagerly, unpadded (None: grow without bound).
        max_oversize: run a call eagerly, unpadded, when its capacity holds more than this
            many times the entries of a fresh capacity for it (None: always padded).
        patience: calls that fit no capacity run eagerly, unpadded, this many times before
            a capacity for the largest of their counts is made (0: at once).
        background: TorchScript graphs are built in a child process, calls run eagerly
            meanwhile (where ``background.available_in_background``; else in place).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        backend: str = "inductor",
        headroom: float = 0.2,
        round_to: int = 32,
        eager: bool = False,
        store: CompiledStore | str | None = "default",
        shrink_below: float | None = None,
        max_shapes: int | None = None,
        max_oversize: float | None = None,
        patience: int = 0,
        background: bool = False,
    ) -> None:
        if headroom < 0 or round_to < 1:
            raise ValueError(f"need headroom >= 0 and round_to >= 1, got {headroom}, {round_to}")
        if (
            (shrink_below is not None and not 0 < shrink_below < 1)
            or (max_shapes is not None and max_shapes < 1)
            or (max_oversize is not None and max_oversize < 1)
            or patience < 0
        ):
            raise ValueError(
                "need 0 < shrink_below < 1, max_shapes >= 1, max_oversize >= 1, patience >= 0; "
                f"got {shrink_below}, {max_shapes}, {max_oversize}, {patience}"
            )
        self.shrink_below = shrink_below
        self.max_shapes = max_shapes
        self.max_oversize = max_oversize
        self.patience = patience
        self._waiting: list[Counts] = []  # counts of the calls that fit no capacity yet
        self.padding = PaddingTally()
        self.eager_calls = 0
        self.unpadded = EagerPotential(model)
        self.model = model
        self.config: ModelConfig = model.config
        self.headroom = headroom
        self.round_to = round_to
        self.backend = backend
        self.capacities: list[Capacity] = []
        if store == "default":  # packages of inductor graphs, TorchScript graphs
            store = None if eager else default_store(backend)
        if isinstance(store, str):
            raise ValueError(f"store={store!r}: use 'default', None or a CompiledStore")
        self.store = store
        # one captured program per (stress, features), built on first use, sharing capacities
        self.captured = {
            (stress, features): CapturedModel(
                model,
                backend=backend,
                eager=eager,
                compute_forces=True,
                compute_stress=stress,
                features=features,
                store=store,
                background=background,
            )
            for stress in (False, True)
            for features in (False, True)
        }
        model.eval()

    @property
    def pads(self) -> bool:
        """Whether calls are padded to capacities: not with TorchScript (any sizes; then
        capacities, shrinking, ``max_shapes``, ``max_oversize``, ``patience`` do nothing)."""
        return self.backend != "torchscript" or self.captured[False, False].eager

    @property
    def graphs_built(self) -> int:
        """Graphs built in this process, both stress settings (loaded: ``graphs_loaded``)."""
        return sum(c.stats.graphs for c in self.captured.values())

    @property
    def compile_seconds(self) -> float:
        """Seconds spent tracing and compiling so far (calls waiting for it)."""
        return sum(c.stats.compile_seconds for c in self.captured.values())

    @property
    def background_seconds(self) -> float:
        """Seconds of builds in a child process so far, while calls ran eagerly."""
        return sum(c.stats.background_seconds for c in self.captured.values())

    @property
    def has_graphs(self) -> bool:
        """Whether a compiled graph was built or loaded yet (a padded potential makes its first
        when its patience runs out, TorchScript at its first call or, with ``background``, the
        first after its child is done)."""
        return self.graphs_built + self.graphs_loaded > 0

    def cancel_builds(self) -> None:
        """Stop builds still running in child processes (``run_md``, ``relax`` at their end)."""
        for captured in self.captured.values():
            captured.cancel_builds()

    @property
    def graphs_loaded(self) -> int:
        """Graphs loaded ready-made from the on-disk store so far."""
        return sum(c.stats.loaded for c in self.captured.values())

    def expected_compile_seconds(
        self, graphs: Sequence[CrystalGraph], *, stress: bool, cold_estimate: float
    ) -> float:
        """Seconds the calls for ``graphs`` would spend compiling: 0 when their shape is compiled
        in this process or they would run eagerly (``max_shapes``), the load when the store has
        it (``STORED_SECONDS``, TorchScript ``SCRIPT_LOAD_SECONDS``; at most ``cold_estimate``),
        else ``cold_estimate``. Asking makes no capacity and counts no call (``patience``)."""
        captured = self.captured[stress, False]
        self.model.eval()
        if not self.pads:
            with torch.no_grad():
                batch = self._collated(graphs)
                if captured.is_compiled(batch):
                    return 0.0
                kept = captured.has_stored_graph(batch)
                return min(SCRIPT_LOAD_SECONDS, cold_estimate) if kept else cold_estimate
        capacity = self._would_use(Counts.of(graphs))
        if capacity is None:  # the calls run eagerly
            return 0.0
        batch = self._padded(graphs, capacity)
        with torch.no_grad():
            if captured.is_compiled(batch):
                return 0.0
            key = captured.store_key("predict", batch, None)
        if key is not None and self.store is not None and self.store.has(key):
            return min(STORED_SECONDS, cold_estimate)
        return cold_estimate

    def padding_for(self, graphs: Sequence[CrystalGraph]) -> float:
        """Padded entries per real one (atoms + bonds + angles, >= 1) of the capacity a first
        call on ``graphs`` would make (not made here)."""
        counts = Counts.of(graphs)
        return entries(self._fresh(counts)) / counts.entries if self.pads else 1.0

    def _fresh(self, counts: Counts) -> Capacity:
        """The capacity a first call with ``counts`` makes: the counts with headroom."""
        return with_headroom(counts, self.headroom, self.round_to)

    def _would_use(self, counts: Counts) -> Capacity | None:
        """The capacity calls with ``counts`` would run in, patience spent (None: eager)."""
        fitting = self._smallest_fitting(counts)
        if fitting is not None or self._at_bound():
            return fitting
        return with_headroom(counts, self.headroom, self.round_to, self._largest())

    def _smallest_fitting(self, counts: Counts) -> Capacity | None:
        """The smallest known capacity ``counts`` fit, or None."""
        fitting = [c for c in self.capacities if fits(c, counts)]
        return min(fitting, key=entries) if fitting else None

    def _largest(self) -> Capacity | None:
        """The largest known capacity (a grown one is never below it), or None."""
        return max(self.capacities, key=entries) if self.capacities else None

    def capacity_for(self, graphs: Sequence[CrystalGraph]) -> Capacity | None:
        """The smallest known capacity ``graphs`` fit (or a tighter one, see ``shrink_below``),
        else a new (grown) one, remembered; None (run eagerly) when that would pass
        ``max_shapes`` or ``patience`` calls have not yet waited for it."""
        return self._capacity_for(Counts.of(graphs), graphs)

    def reserve(self, batches: Sequence[Sequence[CrystalGraph]]) -> None:
        """Make the capacity every one of ``batches`` fits (the largest of each count over
        them, with headroom) before their calls, unless a known one holds them: a caller that
        knows its calls (``predict_graph_list``) compiles one shape for all of them, where the
        first call's own counts need not bound the others' (16 one-atom cells, then 4 and a
        27-atom one). Nothing with TorchScript (any sizes) or ``patience`` (eager calls first),
        nor where that shape would pad more than ``RESERVE_PADDING`` over more than
        ``RESERVE_BATCHES`` batches (a long list of small cells with one large one: padding
        every call would cost more than a second compile for the large one)."""
        if self.pads and batches and self.patience == 0:
            each = [Counts.of(batch) for batch in batches]
            counts = peak(each)
            shape = with_headroom(counts, self.headroom, self.round_to, self._largest())
            padded = entries(shape) * len(each) / max(1, sum(c.entries for c in each))
            if len(each) <= RESERVE_BATCHES or padded <= 1 + RESERVE_PADDING:
                self._capacity_for(counts, [graph for batch in batches for graph in batch])

    def _at_bound(self) -> bool:
        return self.max_shapes is not None and len(self.capacities) >= self.max_shapes

    def _capacity_for(self, counts: Counts, graphs: Sequence[CrystalGraph]) -> Capacity | None:
        best = self._smallest_fitting(counts)
        if best is not None:
            return self._shrink(best, counts) or best
        if self._at_bound():
            return None
        self._waiting.append(counts)
        if len(self._waiting) <= self.patience:
            return None
        counts, self._waiting = peak(self._waiting), []
        largest = self._largest()
        capacity = with_headroom(counts, self.headroom, self.round_to, largest)
        if largest is not None:
            names = ", ".join(g.name or "?" for g in graphs[:3])
            names += ", ..." if len(graphs) > 3 else ""
            message = "%s outgrew capacity %s (needs %s): grown to %s, one more compile"
            log.info(message, names, largest, counts, capacity)
        self.capacities.append(capacity)
        return capacity

    def _shrink(self, current: Capacity, counts: Counts) -> Capacity | None:
        """A tighter capacity than ``current`` for ``counts``, remembered, or None."""
        if self.shrink_below is None or self._at_bound():
            return None
        # a lower rung that overflowed is grown rather than given a near twin
        below = [c for c in self.capacities if entries(c) < entries(current)]
        rung = max(below, key=entries) if below else None
        capacity = shrunk(current, counts, self.headroom, self.round_to, self.shrink_below, rung)
        if capacity is None:
            return None
        share, shapes = 100 * counts.entries / entries(current), len(self.capacities) + 1
        message = "graphs need %s, %.0f %% of capacity %s: shrunk to %s (shape %d of at most %s)"
        log.info(message, counts, share, current, capacity, shapes, self.max_shapes or "-")
        self.capacities.append(capacity)
        return capacity

    def _oversized(self, capacity: Capacity, counts: Counts) -> bool:
        if self.max_oversize is None:
            return False
        return entries(capacity) > self.max_oversize * entries(self._fresh(counts))

    def _padded(self, graphs: Sequence[CrystalGraph], capacity: Capacity) -> GraphBatch:
        """``graphs`` collated and padded to ``capacity``, in the model's dtype and on its
        device, every tensor contiguous (what the captured programs are specialised on)."""
        parameter = next(iter(self.model.parameters()))
        batch, _ = collate_padded(graphs, capacity, None, parameter.dtype)
        return contiguous(batch.to(parameter.device))

    def _collated(self, graphs: Sequence[CrystalGraph]) -> GraphBatch:
        """``graphs`` collated as they are, in the model's dtype and on its device."""
        parameter = next(iter(self.model.parameters()))
        return collate(graphs, dtype=parameter.dtype).to(parameter.device)

    def predict_graphs(
        self,
        graphs: Sequence[CrystalGraph],
        *,
        stress: bool,
        forces: bool = True,
        features: bool = False,
    ) -> Prediction:
        """One padded, compiled model call for ``graphs`` (an eager, unpadded one past
        ``max_shapes`` or ``max_oversize``; an unpadded one with TorchScript, ``pads``); the
        Prediction of the real ones (the ``fastchgnet.model.potential.Potential`` interface).
        The captured programs always compute forces: without ``forces`` they are dropped
        (an eager call then skips them, and with ``stress`` off its backward pass too).

        Returns:
            energy (S,) eV/atom, total_energy (S,) eV, forces (N, 3) eV/Å when ``forces``,
            stress (S, 3, 3) GPa when ``stress`` (else None), magmoms (N,) μB, site_energies
            (N,) eV and, with ``features``, atom_features (N, A) and crystal_features (S, A);
            S structures, N their atoms.
        """
        if not graphs:
            raise ValueError("predict_graphs needs at least one graph")
        if self.model.training:  # the captured programs are specialised on eval mode
            self.model.eval()  # (a walk of every module, about 0.24 ms: only when needed)
        counts = Counts.of(graphs)
        if not self.pads:  # TorchScript takes any sizes: the graphs as they are
            self.padding.add(counts.entries, None)
            batch = self._collated(graphs)
            with torch.no_grad(), flush_denormals():
                prediction = self.captured[stress, features].predict(batch)
            return real_part(prediction, graphs, stress, features, copy=False, forces=forces)
        capacity = self._capacity_for(counts, graphs)
        if capacity is None or self._oversized(capacity, counts):
            self.eager_calls += 1
            self.padding.add(counts.entries, None)
            return self.unpadded.predict_graphs(
                graphs, stress=stress, forces=forces, features=features
            )
        self.padding.add(counts.entries, capacity)
        batch = self._padded(graphs, capacity)
        with torch.no_grad(), flush_denormals():
            padded = self.captured[stress, features].predict(batch)
        # on a GPU the outputs are CUDA graphs' static buffers, which the next call overwrites:
        # the caller gets a copy (on a CPU each call's outputs are its own)
        copy = padded.forces.is_cuda
        return real_part(padded, graphs, stress, features, copy=copy, forces=forces)
