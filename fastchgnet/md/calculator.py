"""An ASE calculator over any FastCHGNet model, and batched evaluation of many ASE Atoms.

The seam to the model is ``Potential``: an ``nn.Module`` with a ``ModelConfig`` called on a
``GraphBatch``. ``FastCHGNet`` in any mode is one. A potential may instead take the graphs
themselves (``GraphPotential.predict_graphs``): ``fastchgnet.compile.CompiledPotential`` pads
them to a fixed capacity, runs the compiled model and unpads the Prediction, and plugs into
``Calculator`` (``Calculator(model, compiled=True)``), ``relax`` and ``run_md`` unchanged.

Units at this edge are ASE's: energy eV (total), site energies ``energies`` eV per atom (they
sum to the energy), forces eV/Å, stress eV/Å^3 as a Voigt
6-vector (xx, yy, zz, yz, xz, xy). Our stress (GPa, CHGNet's sign: (1/V) dE/dstrain) has
ASE's sign already, so it is only scaled by ``ase.units.GPa``, as the reference calculator does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator as AseCalculator
from ase.calculators.calculator import all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from fastchgnet.data.batch import GraphBatch, collate
from fastchgnet.data.graph import CrystalGraph, NeighbourBackend
from fastchgnet.md.neighbours import VerletGraph
from fastchgnet.md.predict import check_elements
from fastchgnet.model.chgnet import Prediction
from fastchgnet.model.config import ModelConfig
from fastchgnet.numerics import flush_denormals


def as_atoms(structure: Any) -> Atoms:
    """A copy of ``structure`` (pymatgen Structure or ASE Atoms) as ASE Atoms."""
    if isinstance(structure, Atoms):
        return structure.copy()
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(structure)


class Potential(Protocol):
    """What the calculator needs of a model: its config (cutoffs, elements), parameters (dtype,
    device) and ``model(batch, compute_forces=, compute_stress=) -> Prediction``."""

    config: ModelConfig

    def __call__(
        self, batch: GraphBatch, *, compute_forces: bool, compute_stress: bool
    ) -> Prediction: ...

    def parameters(self) -> Any: ...

    def eval(self) -> Any: ...


@runtime_checkable
class GraphPotential(Protocol):
    """A potential that takes crystal graphs (and batches them itself, e.g. padded to a
    compiled capacity): ``predict_graphs(graphs, stress=) -> Prediction`` of those graphs."""

    config: ModelConfig

    def predict_graphs(self, graphs: Sequence[CrystalGraph], *, stress: bool) -> Prediction: ...

    def parameters(self) -> Any: ...

    def eval(self) -> Any: ...


def evaluate_graphs(
    model: Potential | GraphPotential,
    graphs: Sequence[CrystalGraph],
    *,
    stress: bool,
    features: bool = False,
) -> list[dict[str, Any]]:
    """One model call for many graphs; ASE results per structure.

    Returns:
        Per graph: ``energy`` and ``free_energy`` () eV total, ``forces`` (n, 3) eV/Å,
        ``magmoms`` (n,) μB, ``energies`` (n,) eV (site energies, where the model gives
        them: eager models) and, when ``stress``, ``stress`` (6,) eV/Å^3 (ASE Voigt order);
        with ``features`` (eager FastCHGNet only) ``crystal_fea`` (A,).
    """
    for graph in graphs:
        check_elements(graph, model.config.max_num_elements)
    if isinstance(model, GraphPotential):
        if features:
            raise ValueError("crystal features need the eager model, not a compiled potential")
        prediction = model.predict_graphs(graphs, stress=stress)
    else:
        parameter = next(iter(model.parameters()))
        batch = collate(graphs, dtype=parameter.dtype).to(parameter.device)
        extra = {"return_features": True} if features else {}
        with flush_denormals():
            prediction = model(batch, compute_forces=True, compute_stress=stress, **extra)
    return ase_results(prediction, [g.n_atoms for g in graphs])


def compiled_potential(model: Potential | GraphPotential, **options: Any) -> GraphPotential:
    """``model`` as a ``CompiledPotential`` (options: backend, headroom, round_to); a
    potential that already takes graphs is returned as it is."""
    if isinstance(model, GraphPotential):
        return model
    from fastchgnet.compile.potential import CompiledPotential

    return CompiledPotential(model, **options)  # type: ignore[arg-type]


def ase_results(prediction: Prediction, n_atoms: Sequence[int]) -> list[dict[str, Any]]:
    """Split a Prediction into per-structure ASE results (float64 numpy, ASE units)."""
    host = {
        "energy": prediction.total_energy,
        "forces": prediction.forces,
        "stress": prediction.stress,
        "magmoms": prediction.magmoms,
        "energies": getattr(prediction, "site_energies", None),
        "crystal_fea": getattr(prediction, "crystal_features", None),
    }
    arrays = {
        k: v.detach().to("cpu", torch.float64).numpy() for k, v in host.items() if v is not None
    }
    cuts = np.cumsum(n_atoms)[:-1]
    per_atom = {
        k: np.split(arrays[k], cuts) for k in ("forces", "magmoms", "energies") if k in arrays
    }
    results = []
    for index in range(len(n_atoms)):
        energy = float(arrays["energy"][index])
        item: dict[str, Any] = {"energy": energy, "free_energy": energy}
        item |= {k: parts[index] for k, parts in per_atom.items()}
        if "crystal_fea" in arrays:
            item["crystal_fea"] = arrays["crystal_fea"][index]
        if "stress" in arrays:
            item["stress"] = full_3x3_to_voigt_6_stress(arrays["stress"][index] * units.GPa)
        results.append(item)
    return results


class Calculator(AseCalculator):
    """ASE calculator for FastCHGNet models (reference-imported, conservative or direct).

    Args:
        model: a ``FastCHGNet`` (or any ``Potential``, or a ``GraphPotential`` such as a
            ``CompiledPotential``); put in eval mode.
        compiled: wrap a plain model in a ``CompiledPotential`` (inductor, fixed capacities:
            MD steps reuse one compiled graph; the first call compiles, tens of seconds on CPU).
        skin: Verlet skin, Å, for reusing neighbour searches between steps (0: search every
            step). The graph is always the one ``build_graph`` gives at the current positions.
        backend: neighbour rule to reproduce, as ``build_graph``.
        always_stress: compute stress on every call, not only when ASE asks for it. MD
            without a barostat never asks, and skipping it saves part of the backward pass.
        name: the structure's name in error messages (default: from the atoms).
        features: also give ``crystal_fea`` (A,) in the results (eager models only).
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress", "magmoms", "energies")

    def __init__(
        self,
        model: Potential | GraphPotential,
        *,
        skin: float = 1.0,
        backend: NeighbourBackend = "pymatgen",
        always_stress: bool = False,
        name: str | None = None,
        compiled: bool = False,
        features: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.features = features
        if compiled:
            model = compiled_potential(model)
        self.model = model
        model.eval()
        config = model.config
        self.neighbours = VerletGraph(config.atom_cutoff, config.bond_cutoff, skin, backend)
        self.always_stress = always_stress
        self.structure_name = name

    def graph(self, atoms: Any) -> CrystalGraph:
        """The crystal graph of ``atoms`` now (reusing the last neighbour search if safe)."""
        return self.neighbours.graph(atoms, self.structure_name)

    def wants_stress(self, properties: Sequence[str]) -> bool:
        """Whether a request for ``properties`` computes stress as well."""
        return self.always_stress or "stress" in properties

    def calculate(
        self,
        atoms: Any = None,
        properties: Sequence[str] = ("energy", "forces"),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        """Fill ``self.results`` for ``atoms`` (ASE units, see the module docstring)."""
        super().calculate(atoms, list(properties), list(system_changes))
        stress = self.wants_stress(properties)
        graphs = [self.graph(self.atoms)]
        self.results = evaluate_graphs(self.model, graphs, stress=stress, features=self.features)[0]

    def store(self, atoms: Any, results: dict[str, Any]) -> None:
        """Take ``results`` computed elsewhere (a batched call) as this calculator's answer for
        ``atoms`` at its current positions, so ASE asks the model nothing more."""
        self.atoms = atoms.copy()
        self.results = dict(results)
