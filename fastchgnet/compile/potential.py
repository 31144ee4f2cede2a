"""CompiledPotential: the captured model behind the ASE calculator, relaxation and MD.

Molecular dynamics evaluates one structure thousands of times; its atoms never change and its
bond and angle counts drift a little. Relaxation evaluates a fixed set of structures, fewer as
they converge. Both are served by a few fixed capacities: the first call picks one with room
(atoms exact + 1 padding atom; short and long bonds ``headroom`` more, angles
``(1 + headroom)^2`` more, each rounded up to ``round_to``), later calls reuse the smallest
capacity the graphs fit, so a run keeps one compiled shape (converged structures leave empty
slots). Angles get the squared margin because they go as the square of the bond-graph degree:
in 45 NVT steps at 300 K from the 0 K crystal, LiMnO2's short bonds rise 15 % and its angles
33 % (Li9Co7O16 6 % and 11 %, a 64-atom LiMnO2 cell 11 % and 22 %). A call that fits none grows
the capacity by the margin from the current counts, never below the old one: one more
compile, logged (logger ``fastchgnet.compile``).

Short (bond-graph) and long bonds are padded separately (``Capacity.short_bonds``), so the
bond-graph work stays that of the real short bonds plus their margin.

On a CPU the programs are compiled ahead of time and kept in the on-disk store
(``fastchgnet.compile.store``): a new process with the same config and shapes starts warm, in
about a second. ``expected_compile_seconds`` says what a call would cost before making it,
for the compile-or-not decision (``fastchgnet.compile.decide``).

Stress costs part of a backward pass and MD without a barostat never asks for it; a
``CapturedModel`` fixes what it computes at construction, so there is one per stress setting,
sharing the capacities.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import fields, replace

import torch
from torch import nn

from fastchgnet.compile.capture import CapturedModel
from fastchgnet.compile.store import CompiledStore, default_store
from fastchgnet.data.batch import GraphBatch
from fastchgnet.data.capacity import Capacity, Counts, fits, with_headroom
from fastchgnet.data.graph import CrystalGraph
from fastchgnet.data.padding import collate_padded, unpad
from fastchgnet.model.chgnet import Prediction
from fastchgnet.model.config import ModelConfig
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


def _cost(capacity: Capacity) -> int:
    return capacity.atoms + capacity.bonds + capacity.angles


class CompiledPotential:
    """A FastCHGNet run compiled for a few fixed capacities: a ``Potential`` for prediction,
    the calculator, relaxation and MD.

    Args:
        model: the model (any mode); put in eval mode here.
        backend: torch.compile backend ("inductor"; "aot_eager" traces the same graph and runs
            it without code generation: for tests).
        headroom: fractional margin on bonds (0.2: 20 % more than the first call; angles get
            44 %, see the module docstring).
        round_to: bonds and angles capacities are multiples of this.
        eager: run the same padded programs without trace or compile (for comparisons).
        store: on-disk store of CPU programs compiled ahead of time ("default": the folder
            ``fastchgnet.compile.store.default_root`` names; None: compile in memory only).
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
    ) -> None:
        if headroom < 0 or round_to < 1:
            raise ValueError(f"need headroom >= 0 and round_to >= 1, got {headroom}, {round_to}")
        self.model = model
        self.config: ModelConfig = model.config
        self.headroom = headroom
        self.round_to = round_to
        self.capacities: list[Capacity] = []
        if store == "default":
            store = default_store() if backend == "inductor" and not eager else None
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
            )
            for stress in (False, True)
            for features in (False, True)
        }
        model.eval()

    @property
    def graphs_built(self) -> int:
        """Compiled graphs so far, both stress settings together."""
        return sum(c.stats.graphs for c in self.captured.values())

    @property
    def compile_seconds(self) -> float:
        """Seconds spent tracing and compiling so far."""
        return sum(c.stats.compile_seconds for c in self.captured.values())

    @property
    def graphs_loaded(self) -> int:
        """Graphs loaded ready-made from the on-disk store so far."""
        return sum(c.stats.loaded for c in self.captured.values())

    def expected_compile_seconds(
        self, graphs: Sequence[CrystalGraph], *, stress: bool, cold_estimate: float
    ) -> float:
        """Seconds the first call for ``graphs`` would spend compiling: 0 when its shape is
        compiled already in this process, about one (the load) when the on-disk store has it,
        else ``cold_estimate``."""
        captured = self.captured[stress, False]
        parameter = next(iter(self.model.parameters()))
        self.model.eval()
        batch, _ = collate_padded(graphs, self.capacity_for(graphs), None, parameter.dtype)
        batch = contiguous(batch.to(parameter.device))
        with torch.no_grad():
            if captured.is_compiled(batch):
                return 0.0
            key = captured.store_key("predict", batch, None)
        if key is not None and self.store is not None and self.store.has(key):
            return 1.0
        return cold_estimate

    def capacity_for(self, graphs: Sequence[CrystalGraph]) -> Capacity:
        """The smallest known capacity ``graphs`` fit, else a new (grown) one, remembered."""
        counts = Counts.of(graphs)
        fitting = [c for c in self.capacities if fits(c, counts)]
        if fitting:
            return min(fitting, key=_cost)
        largest = max(self.capacities, key=_cost) if self.capacities else None
        capacity = with_headroom(counts, self.headroom, self.round_to, largest)
        if largest is not None:
            names = ", ".join(g.name or "?" for g in graphs[:3])
            names += ", ..." if len(graphs) > 3 else ""
            log.info(
                "%s outgrew capacity %s (needs %s): grown to %s, one more compile",
                names,
                largest,
                counts,
                capacity,
            )
        self.capacities.append(capacity)
        return capacity

    def predict_graphs(
        self, graphs: Sequence[CrystalGraph], *, stress: bool, features: bool = False
    ) -> Prediction:
        """One padded, compiled model call for ``graphs``; the Prediction of the real ones
        (the ``fastchgnet.model.potential.Potential`` interface).

        Returns:
            energy (S,) eV/atom, total_energy (S,) eV, forces (N, 3) eV/Å, stress (S, 3, 3)
            GPa when ``stress`` (else None), magmoms (N,) μB, site_energies (N,) eV and, with
            ``features``, atom_features (N, A) and crystal_features (S, A); S structures, N
            their atoms.
        """
        if not graphs:
            raise ValueError("predict_graphs needs at least one graph")
        self.model.eval()  # the captured programs are specialised on eval mode
        parameter = next(iter(self.model.parameters()))
        batch, _ = collate_padded(graphs, self.capacity_for(graphs), None, parameter.dtype)
        batch = contiguous(batch.to(parameter.device))
        with torch.no_grad(), flush_denormals():
            padded = self.captured[stress, features].predict(batch)
        n_structures, n_atoms = len(graphs), sum(g.n_atoms for g in graphs)
        return Prediction(
            energy=unpad(padded.energy, n_structures),
            total_energy=unpad(padded.total_energy, n_structures),
            forces=unpad(padded.forces, n_atoms),
            stress=unpad(padded.stress, n_structures) if stress else None,
            magmoms=None if padded.magmoms is None else unpad(padded.magmoms, n_atoms),
            site_energies=unpad(padded.site_energies, n_atoms),
            atom_features=unpad(padded.atom_features, n_atoms) if features else None,
            crystal_features=unpad(padded.crystal_features, n_structures) if features else None,
        )
