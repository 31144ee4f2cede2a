"""Structure relaxation with ASE optimizers (FIRE, BFGS), one structure at a time or batched.

Every structure gets its own ASE optimizer, over a ``FrechetCellFilter`` when the cell relaxes.
Batched (the default for several structures), up to ``batch_size`` structures advance in
lockstep: each step evaluates every active structure in one model call, hands each calculator
its answer, then steps every optimizer, which reads the cached forces. A structure that
converges (or runs out of steps) leaves, and the next one from the input takes its slot, so
the model calls stay full while input remains; the input may be a generator, read only as
slots free up. The optimizer maths is ASE's, so both paths follow the same trajectories (up
to floating-point noise from batching).

Compiled (``compiled=True``: a ``CompiledPotential`` with ``RELAX_COMPILE``), every
calculator shares one potential. After ``RELAX_PATIENCE`` eager calls (cells compress and
gain bonds and angles fastest in the first steps) it makes a padded capacity with headroom for
the largest of their counts, and grows it the same way when calls outgrow it. Once the active
structures need at most ``RELAX_SHRINK_BELOW`` of its entries (the input ran dry, structures
converged) it switches to a tighter one; each shape compiles once, logged. Past
``RELAX_MAX_SHAPES`` shapes, or in a capacity more than ``RELAX_MAX_OVERSIZE`` times the size a
fresh one would have, a call runs eagerly, so a captured step is never much slower than eager.
With ``compiled="torchscript"`` none of that applies: its graphs take any sizes, so every call
runs unpadded, and one build serves the run (one more once a single structure is left: the
structure count 1 traces as a constant).

By default (``compiled=None``) a batched relaxation of a plain model decides after its first
model call, which it times: it compiles when cold compiles of ``RELAX_MAX_SHAPES`` shapes
(``fastchgnet.compile.decide``) cost less than the time saved over ``RELAX_TYPICAL_STEPS``
calls per ``batch_size`` structures, a compiled call taking what the one cost model of MD and
relaxation (``compiled_call_model``: on a CPU by its instruction set and the padding of the
first shape) expects; the decision and its reason are logged (logger ``fastchgnet.md``) and
printed with the progress bar.

This module runs over 300 lines: the lockstep loop, the queue and the compile choice act on
the same per-structure state, and splitting them would spread one loop across files.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from ase import Atoms
from tqdm import tqdm

from fastchgnet.data.graph import CrystalGraph, structure_name
from fastchgnet.errors import StructureError
from fastchgnet.md.calculator import (
    Calculator,
    as_atoms,
    capture_backend,
    compiled_potential,
)
from fastchgnet.md.outputs import RelaxInterrupted, RelaxResult, write_frames
from fastchgnet.md.relaxation import OPTIMIZERS, Relaxation, failure, run_each, run_lockstep
from fastchgnet.md.verlet_graph import VerletGraph
from fastchgnet.model.potential import (
    Potential,
    as_potential,
    check_batch_size,
    is_structure,
)

log = logging.getLogger("fastchgnet.md")

OptimizerName = Literal["FIRE", "BFGS"]
#: bond and angle margin of ``relax(compiled=True)``: capacities are made for the peak counts of
#: ``RELAX_PATIENCE`` calls, so a small margin serves; 0.3 (angles 1.69x) left 83 % padding
#: waste on bench_relax, where compiled calls beat eager ones only below about 60 %
RELAX_HEADROOM = 0.15
#: shrink to a tighter capacity once one would hold at most this fraction of the current one
RELAX_SHRINK_BELOW = 0.75
#: most capacities (compiled shapes per stress setting) in one run, growth and shrinks together
RELAX_MAX_SHAPES = 4
#: a call whose capacity is more than this many times a fresh one for it runs eagerly (when no
#: shape is left to shrink to: 1 / RELAX_SHRINK_BELOW)
RELAX_MAX_OVERSIZE = 1 / RELAX_SHRINK_BELOW
#: eager calls before a first or grown capacity is made, for the largest counts among them
RELAX_PATIENCE = 10
#: model calls a batch of structures is expected to take, for the compile-or-not decision: the
#: step limit, or this many when that is larger (FIRE with the cell filter at fmax 0.1 took
#: 50-200 steps on bench_relax's crystals)
RELAX_TYPICAL_STEPS = 100
#: the ``CompiledPotential`` options of ``relax(compiled=True)``
RELAX_COMPILE = {
    "headroom": RELAX_HEADROOM,
    "shrink_below": RELAX_SHRINK_BELOW,
    "max_shapes": RELAX_MAX_SHAPES,
    "max_oversize": RELAX_MAX_OVERSIZE,
    "patience": RELAX_PATIENCE,
    "background": True,  # TorchScript builds in a child process (``compile.background``)
}


def relax(
    structures: Any,
    model: Potential | Any | None = None,
    *,
    fmax: float = 0.1,
    steps: int = 500,
    relax_cell: bool = True,
    optimizer: OptimizerName = "FIRE",
    trajectory: str | Path | None = None,
    batched: bool = True,
    batch_size: int = 64,
    skin: float = 1.0,
    progress: bool = False,
    compiled: bool | str | None = None,
    neighbours: Sequence[VerletGraph] | None = None,
    skip_failed: bool = False,
) -> RelaxResult | list[RelaxResult]:
    """Relax one or many structures until every force is below ``fmax``.

    Args:
        structures: a pymatgen Structure / ASE Atoms, or any iterable of them: a list, or a
            generator / iterator, taken one structure at a time as slots free up (so a
            generator reading files holds only ``batch_size`` structures). Not modified.
        model: the potential (default: FastCHGNet with the reference 0.3.0 weights).
        fmax: force threshold, eV/Å (the cell's generalised forces included).
        steps: most optimizer steps per structure.
        relax_cell: relax lattice vectors too (FrechetCellFilter).
        optimizer: "FIRE" or "BFGS" (ASE's).
        trajectory: write every structure's steps here (extxyz, traj, ...: ASE picks the format
            from the suffix); frames carry ``info["structure"]`` and ``info["step"]``.
        batched: relax up to ``batch_size`` structures together, one model call per step;
            a finished one's slot goes to the next input structure. False runs ASE's
            ``optimizer.run`` per structure.
        skin: Verlet skin of every calculator, Å.
        progress: show a progress bar.
        compiled: run a plain model as a ``CompiledPotential`` with ``RELAX_COMPILE``
            (True or "inductor": at most 4 shapes, each compiled once, 80-110 s on this CPU
            when the on-disk store is cold, so it pays off for long runs; "torchscript":
            about three seconds, once for any sizes, a smaller gain per call). A
            ``CompiledPotential`` passed as ``model`` keeps its own options. None (default):
            batched, a plain model compiles when it pays (see the module docstring);
            unbatched, it stays eager.
        neighbours: one per structure of a list, the neighbour list its calculator starts
            from (``first_neighbours``', made by a screen of the structures: their searches
            are not made again; its skin serves instead of ``skin``).
        skip_failed: a structure the model cannot take, at the start or at a later step,
            gets a ``RelaxResult`` with its ``error`` (energy NaN) and a warning naming it,
            and the others go on (a screen of many files); False: the StructureError ends
            the run.

    Returns:
        A RelaxResult for one structure, else a list in input order.

    Raises:
        StructureError: an input that is no structure, or one that cannot be predicted,
            named with its position in the input (unless ``skip_failed``); its ``results``
            carry the structures finished and the current geometry of the others relaxing, as
            RelaxInterrupted's, and the trajectory frames gathered so far are written first.
        RelaxInterrupted: SIGINT or SIGTERM (``signals.stop_signals``) stopped the run; it
            carries the structures finished and the current geometry of those relaxing, and
            the trajectory frames gathered so far are written first.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {optimizer!r}: use one of {sorted(OPTIMIZERS)}")
    batch_size = check_batch_size(batch_size)
    if not fmax > 0 or steps < 0:  # NaN is not > 0
        raise ValueError(f"need fmax > 0 and steps >= 0; got {fmax}, {steps}")
    single = is_structure(structures)
    if not single and (not isinstance(structures, Iterable) or isinstance(structures, str | Path)):
        raise TypeError(f"structures: Structure(s) or Atoms, not {structures!r} (read files first)")
    if model is None:
        from fastchgnet.model.chgnet import FastCHGNet

        model = FastCHGNet.from_reference("0.3.0")
    items = [structures] if single else structures
    total = len(items) if hasattr(items, "__len__") else None
    if neighbours is not None and len(neighbours) != total:
        count = "an unsized input of" if total is None else total
        raise ValueError(f"neighbours: {len(neighbours)} for {count} structures; give one each")
    choose, capture = None, capture_backend(compiled)  # a bad name fails here, in one line
    if compiled is None and batched and _is_plain_model(model):
        batches = 1 if total is None else -(-total // batch_size)
        calls = min(steps, RELAX_TYPICAL_STEPS) * batches
        choose = _compile_chooser(model, calls, relax_cell, progress)
    if compiled:  # patience, re-sizing, a shape budget: see RELAX_COMPILE
        model = compiled_potential(model, backend=capture, **RELAX_COMPILE)
    potential = as_potential(model)  # one potential shared by every calculator

    def start(index: int, structure: Any) -> Relaxation | RelaxResult:
        name = structure_name(structure, None if single else index)
        try:
            if not is_structure(structure):
                raise StructureError(name, "is not a pymatgen Structure or ASE Atoms")
            given = None if neighbours is None else neighbours[index]
            calc = Calculator(  # the cell filter asks for forces, then stress: one call for both
                potential, skin=skin, always_stress=relax_cell, name=name, neighbours=given
            )
            atoms = as_atoms(structure, name)
        except StructureError as error:
            if not skip_failed:
                raise
            atoms = structure.copy() if isinstance(structure, Atoms) else Atoms()
            return failure(atoms, error, 0, [])
        return Relaxation(atoms, calc, optimizer, relax_cell, trajectory is not None)

    runs = (start(k, s) for k, s in enumerate(items))
    try:
        with tqdm(total=total, desc="relax", unit="structure", disable=not progress) as bar:
            if batched:
                results = run_lockstep(
                    runs, potential, fmax, steps, relax_cell, batch_size, bar, skip_failed, choose
                )
            else:
                results = run_each(runs, fmax, steps, bar, skip_failed)
    except (RelaxInterrupted, StructureError) as stop:
        kept = getattr(stop, "results", None)
        if trajectory is not None and kept is not None:
            write_frames(trajectory, kept)
        raise
    if not results:
        raise ValueError("no structures to relax")
    if trajectory is not None:
        write_frames(trajectory, results)
    return results[0] if single else results


def _is_plain_model(model: Any) -> bool:
    """Whether ``model`` is a FastCHGNet (None: the default one), not a potential."""
    from fastchgnet.model.chgnet import FastCHGNet

    return model is None or isinstance(model, FastCHGNet)


def _compile_chooser(
    model: Any, calls: int, stress: bool, progress: bool
) -> Callable[[float, list[CrystalGraph]], Potential | None]:
    """Given the second (eager) call's seconds and graphs: a ``CompiledPotential`` of ``model``
    with ``RELAX_COMPILE`` when compiling pays over ``calls`` calls, else None; logs and, with
    ``progress``, prints the decision. The cost is a cold compile of each of
    ``RELAX_MAX_SHAPES`` shapes (TorchScript: two builds, one for a single structure, each
    priced as a load where the store keeps it); a
    compiled call is expected to take what
    ``compiled_call_model`` (``fastchgnet.compile.decide``) says for the device and, on a CPU,
    for its instruction set and the padding of the shape the first call would make (bench_relax
    measured 1.23 padded entries per real one over a whole run of 16 crystals, stop 32, where
    that first shape held 1.26)."""
    from fastchgnet.compile.decide import choose_capture, compiled_call_model

    def choose(eager_seconds: float, graphs: list[CrystalGraph]) -> Potential | None:
        def price(backend: str) -> tuple[float, float, Potential]:
            potential = compiled_potential(model, backend=backend, **RELAX_COMPILE)
            padding = potential.padding_for(graphs)
            background = RELAX_COMPILE["background"]
            fraction, cold = compiled_call_model(
                device, eager_seconds, padding, potential.store, backend, background
            )
            if potential.pads:  # every shape may compile: bench_relax's 16 crystals used all
                return fraction, RELAX_MAX_SHAPES * cold, potential
            # TorchScript: one graph for any sizes and one for a last structure, each a load
            # where the store keeps it
            cost = sum(
                potential.expected_compile_seconds(part, stress=stress, cold_estimate=cold)
                for part in ([graphs, graphs[:1]] if len(graphs) > 1 else [graphs])
            )
            return fraction, cost, potential

        device = next(model.parameters()).device.type
        what = f"relaxation (~{calls} calls)"
        decision, potential = choose_capture(calls, eager_seconds, device, price, what=what)
        log.info(decision.reason)
        if progress:
            tqdm.write(decision.reason, file=sys.stderr)
        return potential if decision.compile else None

    return choose
