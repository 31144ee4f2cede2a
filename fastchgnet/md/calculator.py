"""An ASE calculator over any FastCHGNet model, and batched evaluation of many ASE Atoms.

The seam to the model is the one potential interface, ``fastchgnet.model.potential.Potential``
(``predict_graphs(graphs, stress=) -> Prediction``): a FastCHGNet runs as an
``EagerPotential``; ``fastchgnet.compile.CompiledPotential`` pads the graphs to a fixed
capacity and runs the compiled model (``Calculator(model, compiled=True)``), or with
TorchScript runs them as they are (``compiled="torchscript"``); ``relax`` and ``run_md`` take
either.

Units at this edge are ASE's: energy eV (total), site energies ``energies`` eV per atom (they
sum to the energy), forces eV/Å, stress eV/Å^3 as a Voigt
6-vector (xx, yy, zz, yz, xz, xy). Our stress (GPa, CHGNet's sign: (1/V) dE/dstrain) has
ASE's sign already, so it is only scaled by ``ase.units.GPa``, as the reference calculator does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator as AseCalculator
from ase.calculators.calculator import all_changes, equal
from ase.stress import full_3x3_to_voigt_6_stress

from fastchgnet.data.graph import CrystalGraph, NeighbourBackend, check_ordered, structure_name
from fastchgnet.md.verlet_graph import VerletGraph
from fastchgnet.model.device import check_device
from fastchgnet.model.potential import Potential, as_potential, check_elements


def as_atoms(structure: Any, name: str | None = None) -> Atoms:
    """A copy of ``structure`` (pymatgen Structure or ASE Atoms) as ASE Atoms.

    Raises:
        TypeError: ``structure`` is neither (a list of them, a dict, a path: one line).
        StructureError: a Structure with partial occupancies, named ``name`` (default: its
            formula and label).
    """
    if isinstance(structure, Atoms):
        return structure.copy()
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    if not isinstance(structure, Structure):
        raise TypeError(
            f"expected one pymatgen Structure or ASE Atoms, got {type(structure).__name__} "
            "(read a file with Structure.from_file; run one structure at a time)"
        )
    check_ordered(structure, name or structure_name(structure))
    return AseAtomsAdaptor.get_atoms(structure)


def first_neighbours(config: Any, structure: Any, name: str, skin: float = 1.0) -> VerletGraph:
    """The neighbour list a ``Calculator`` (``skin`` Å) of a model of ``config`` starts
    ``structure`` from, its first search made and the checks of its first call passed: given
    to that calculator (``Calculator(neighbours=...)``, ``relax(neighbours=...)``), it searches
    no more there. A screen of many structures that keeps these does each search once.

    Raises:
        StructureError: what that first call raises for ``structure``, named ``name``.
    """
    neighbours = VerletGraph(config.atom_cutoff, config.bond_cutoff, skin)
    check_elements(neighbours.graph(as_atoms(structure, name), name), config.max_num_elements)
    return neighbours


def evaluate_graphs(
    model: Any,
    graphs: Sequence[CrystalGraph],
    *,
    stress: bool,
    features: bool = False,
    forces: bool = True,
) -> list[dict[str, Any]]:
    """One call of the potential (``model``: a Potential or a FastCHGNet) for many graphs;
    ASE results per structure.

    Returns:
        Per graph: ``energy`` and ``free_energy`` () eV total, ``magmoms`` (n,) μB,
        ``energies`` (n,) eV (site energies), when ``forces`` ``forces`` (n, 3) eV/Å, when
        ``stress`` ``stress`` (6,) eV/Å^3 (ASE Voigt order); with ``features`` (eager only)
        ``crystal_fea`` (A,). Neither forces nor stress: the forward pass alone.
    """
    potential = as_potential(model)
    for graph in graphs:
        check_elements(graph, potential.config.max_num_elements)
    prediction = potential.predict_graphs(graphs, stress=stress, forces=forces, features=features)
    return [ase_result(part) for part in prediction.split([g.n_atoms for g in graphs])]


#: The captures a ``compiled`` argument may name (True: inductor); see ``CapturedModel``.
CAPTURES = ("inductor", "torchscript")


def capture_backend(compiled: bool | str | None) -> str:
    """The capture backend a ``compiled`` argument asks for: the name it gives (one of
    ``CAPTURES``), else "inductor". Raises ValueError for any other string."""
    if isinstance(compiled, str):
        if compiled not in CAPTURES:
            raise ValueError(f"compiled={compiled!r}: use True, False or one of {CAPTURES}")
        return compiled
    return "inductor"


def compiled_potential(model: Any, **options: Any) -> Potential:
    """``model`` as a ``CompiledPotential`` (options: backend, headroom, round_to); a
    CompiledPotential is returned as it is."""
    from fastchgnet.compile.potential import CompiledPotential

    if isinstance(model, CompiledPotential):
        return model
    return CompiledPotential(model, **options)


#: ASE result name -> Prediction field (per-structure split)
ASE_FIELDS = {
    "forces": "forces",
    "magmoms": "magmoms",
    "energies": "site_energies",
    "crystal_fea": "crystal_features",
}


def ase_result(part: dict[str, np.ndarray]) -> dict[str, Any]:
    """One structure's ``Prediction.split`` entry as ASE results (float64, ASE units)."""
    energy = float(part["total_energy"])
    item: dict[str, Any] = {"energy": energy, "free_energy": energy}
    item |= {k: np.asarray(part[f], np.float64) for k, f in ASE_FIELDS.items() if f in part}
    if "stress" in part:
        stress = np.asarray(part["stress"], np.float64) * units.GPa
        item["stress"] = full_3x3_to_voigt_6_stress(stress)
    return item


def stress_runs_eagerly(potential: Any) -> bool:
    """Whether a ``stress_next`` call of a calculator running ``potential`` goes to its eager
    model (``unpadded``): for a padded capture (inductor), whose stress program would be a
    second build of tens of seconds for one call in ``loginterval``; and for a TorchScript
    capture until its force graph is there. After that a TorchScript capture builds its stress
    graph too (any sizes; seconds, in a child process where the force graph's was), so the
    written frames of a long MD run stop paying an eager call each."""
    if not hasattr(potential, "unpadded"):
        return False  # an eager potential answers every call itself
    return potential.pads or not potential.has_graphs


class Calculator(AseCalculator):
    """ASE calculator for FastCHGNet models (reference-imported, conservative or direct).

    Args:
        model: a ``FastCHGNet`` or a ``Potential`` (e.g. a ``CompiledPotential``).
        compiled: wrap a plain model in a ``CompiledPotential`` (fixed capacities: MD steps
            reuse one compiled graph). True or "inductor": the first call compiles, tens of
            seconds on a CPU; "torchscript": about three seconds, for any sizes (no padding),
            a smaller gain per call.
        skin: Verlet skin, Å, for reusing neighbour searches between steps (0: search every
            step). The graph is always the one ``build_graph`` gives at the current positions.
        backend: neighbour rule to reproduce, as ``build_graph``.
        always_stress: compute stress on every call, not only when ASE asks for it. MD
            without a barostat never asks, and skipping it saves part of the backward pass.
            ``stress_next`` (attribute, default False) asks it of the next call only (an MD
            step that is written, ``md.frames``); see ``stress_runs_eagerly`` for which
            potential answers it.
        name: the structure's name in error messages (default: from the atoms).
        features: also give ``crystal_fea`` (A,) in the results (eager models only).
        allow_isolated: predict structures with atoms that have no neighbour (see
            ``build_graph``) instead of raising.
        device: where the model runs ("cpu", "cuda", ...): it is moved there (default: where
            it is now).
        neighbours: the ``VerletGraph`` to continue from (``first_neighbours``'s, its search
            made), with the model's cutoffs; its own skin, rule and ``allow_isolated`` serve
            (default: a new one).
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress", "magmoms", "energies")

    def __init__(
        self,
        model: Any,
        *,
        skin: float = 1.0,
        backend: NeighbourBackend = "pymatgen",
        always_stress: bool = False,
        name: str | None = None,
        compiled: bool | str = False,
        features: bool = False,
        allow_isolated: bool = False,
        device: str | torch.device | None = None,
        neighbours: VerletGraph | None = None,
        **kwargs: Any,
    ) -> None:
        if "use_device" in kwargs:  # ASE would keep it as an unused parameter
            raise TypeError(
                "Calculator takes device=..., not use_device (the reference's name, which "
                "fastchgnet.compat.CHGNetCalculator takes)"
            )
        super().__init__(**kwargs)
        if device is not None:
            module = getattr(model, "model", model)  # a Potential's module, or the module
            module.to(check_device(device))
        self.features = features
        capture = capture_backend(compiled)  # not ``backend``: that is the neighbour rule
        self.potential = (  # what every call goes to
            compiled_potential(model, backend=capture) if compiled else as_potential(model)
        )
        config = self.potential.config
        self.neighbours = neighbours or VerletGraph(
            config.atom_cutoff, config.bond_cutoff, skin, backend, allow_isolated
        )
        cutoffs = (self.neighbours.atom_cutoff, self.neighbours.bond_cutoff)
        if cutoffs != (config.atom_cutoff, config.bond_cutoff):
            raise ValueError(
                f"neighbours: cutoffs {cutoffs} Å, but the model's are "
                f"{(config.atom_cutoff, config.bond_cutoff)}"
            )
        self.always_stress = always_stress
        self.stress_next = False
        self.structure_name = name

    def graph(self, atoms: Any) -> CrystalGraph:
        """The crystal graph of ``atoms`` now (reusing the last neighbour search if safe)."""
        return self.neighbours.graph(atoms, self.structure_name)

    def wants_stress(self, properties: Sequence[str]) -> bool:
        """Whether a request for ``properties`` computes stress as well."""
        return self.always_stress or self.stress_next or "stress" in properties

    def check_state(self, atoms: Any, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation, as ASE's ``compare_atoms`` says, with an
        exact-equality test first for each property. ASE asks this at every property request,
        three times an MD step, and its tolerance test of six properties cost 0.2 ms a time,
        4 % of an 8-atom step; an exactly equal array is equal under any tolerance."""
        old = self.atoms
        if old is None:
            return list(all_changes)
        check = [p for p in all_changes if p not in set(self.ignored_changes)]
        changes = []
        for prop in check:
            if prop in ("cell", "pbc"):
                a, b = np.asarray(getattr(old, prop)), np.asarray(getattr(atoms, prop))
            elif (prop in old.arrays) != (prop in atoms.arrays):
                changes.append(prop)
                continue
            elif prop in old.arrays:
                a, b = old.arrays[prop], atoms.arrays[prop]
            else:
                continue
            if not (np.array_equal(a, b) or equal(a, b, atol=tol)):
                changes.append(prop)
        return changes

    def calculate(
        self,
        atoms: Any = None,
        properties: Sequence[str] = ("energy", "forces"),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        """Fill ``self.results`` for ``atoms`` (ASE units, see the module docstring)."""
        super().calculate(atoms, list(properties), list(system_changes))
        graphs = [self.graph(self.atoms)]
        stress, features = self.wants_stress(properties), self.features
        potential = self.potential
        if self.stress_next and not self.always_stress and stress_runs_eagerly(potential):
            potential = potential.unpadded
        self.stress_next = False
        self.results = evaluate_graphs(potential, graphs, stress=stress, features=features)[0]

    def store(self, atoms: Any, results: dict[str, Any]) -> None:
        """Take ``results`` computed elsewhere (a batched call) as this calculator's answer for
        ``atoms`` at its current positions, so ASE asks the model nothing more."""
        self.atoms = atoms.copy()
        self.results = dict(results)
