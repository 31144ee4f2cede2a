"""Batched prediction from structures, returning numpy per structure as the reference does."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fastchgnet.data.batch import collate
from fastchgnet.data.graph import CrystalGraph, build_graph, structure_name
from fastchgnet.errors import StructureError
from fastchgnet.numerics import flush_denormals

if TYPE_CHECKING:
    from fastchgnet.model.chgnet import FastCHGNet


def graphs_for(model: FastCHGNet, structures: Sequence[Any], start: int = 0) -> list[CrystalGraph]:
    """Build and check the graphs of ``structures`` (pymatgen or ASE) for ``model``.

    Raises:
        StructureError: naming the structure (and its position) and the problem.
    """
    graphs = []
    config = model.config
    for offset, structure in enumerate(structures):
        name = structure_name(structure, start + offset)
        graph = build_graph(structure, config.atom_cutoff, config.bond_cutoff, name=name)
        check_elements(graph, config.max_num_elements)
        graphs.append(graph)
    return graphs


def check_elements(graph: CrystalGraph, max_num_elements: int) -> None:
    """Raise if the graph holds an element the model has no embedding for."""
    too_heavy = graph.atomic_numbers > max_num_elements
    if too_heavy.any():
        z = sorted(set(graph.atomic_numbers[too_heavy].tolist()))
        raise StructureError(
            graph.name, f"element(s) Z={z} beyond the model's {max_num_elements} elements"
        )


def is_structure(obj: object) -> bool:
    """True for one pymatgen Structure or ASE Atoms (both are also sequences, of sites)."""
    return hasattr(obj, "get_scaled_positions") or (
        hasattr(obj, "lattice") and hasattr(obj, "frac_coords")
    )


def predict_structures(
    model: FastCHGNet, structure: Any, batch_size: int = 16, compiled: bool | None = None
) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
    """Predict energy, forces, stress and magnetic moments.

    Args:
        model: the model (put in eval mode for the call, then restored).
        structure: one pymatgen Structure / ASE Atoms, or a sequence of them.
        batch_size: structures per model call.
        compiled: run the model compiled for fixed padded shapes (``CompiledPotential``,
            kept with the model for later calls): structures go largest first, so the first
            batch's shape (plus headroom) serves the rest. None (default): compiled on a GPU,
            eager on a CPU, where each new shape costs tens of seconds of compilation.

    Returns:
        Per structure a dict of numpy arrays: ``e`` () eV/atom, ``f`` (n, 3) eV/Å,
        ``s`` (3, 3) GPa, ``m`` (n,) μB. A single structure gives one dict, a sequence a list.
    """
    single = is_structure(structure)
    structures = [structure] if single else list(structure)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    parameter = next(model.parameters())
    if compiled is None:
        compiled = parameter.is_cuda
    was_training = model.training
    model.eval()
    try:
        if compiled:
            results = _predict_compiled(model, structures, batch_size)
        else:
            results = predict_graphs(model, graphs_for(model, structures), batch_size)
    finally:
        model.train(was_training)
    return results[0] if single else results


def predict_graphs(
    model: FastCHGNet,
    graphs: Sequence[CrystalGraph],
    batch_size: int = 16,
    *,
    forces: bool = True,
    stress: bool = True,
    features: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Eager model calls on ``batch_size`` graphs at a time (the model's mode is left as it
    is); per graph the numpy dict of ``split_prediction`` (``features``: with site energies,
    atom and crystal features). ``forces``/``stress``: compute them (else the keys are absent).
    """
    parameter = next(model.parameters())
    results: list[dict[str, np.ndarray]] = []
    for start in range(0, len(graphs), batch_size):
        batch = collate(graphs[start : start + batch_size], dtype=parameter.dtype)
        with flush_denormals():
            prediction = model(
                batch.to(parameter.device),
                compute_forces=forces,
                compute_stress=stress,
                return_features=features,
            )
        results += split_prediction(prediction, batch.n_atoms, extras=features)
    return results


#: One CompiledPotential per model, so repeated predictions reuse its compiled shapes.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _predict_compiled(
    model: FastCHGNet, structures: list[Any], batch_size: int
) -> list[dict[str, np.ndarray]]:
    """Largest structures first through the model's CompiledPotential; input order back."""
    from fastchgnet.compile.potential import CompiledPotential

    potential = _COMPILED.get(model)
    if potential is None:
        potential = _COMPILED[model] = CompiledPotential(model)
    graphs = graphs_for(model, structures)
    cost = [g.n_atoms + g.n_bonds + g.n_angles for g in graphs]
    order = sorted(range(len(graphs)), key=lambda k: -cost[k])
    results: list[dict[str, np.ndarray]] = [{} for _ in graphs]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch_graphs = [graphs[k] for k in chunk]
        prediction = potential.predict_graphs(batch_graphs, stress=True)
        n_atoms = torch.tensor([g.n_atoms for g in batch_graphs])
        for k, item in zip(chunk, split_prediction(prediction, n_atoms), strict=True):
            results[k] = item
    return results


#: Per-atom fields of ``split_prediction``: key -> Prediction attribute.
PER_ATOM = {
    "f": "forces",
    "m": "magmoms",
    "site_energies": "site_energies",
    "atom_fea": "atom_features",
}
#: Per-structure fields (beyond ``e``): key -> Prediction attribute.
PER_STRUCTURE = {"s": "stress", "crystal_fea": "crystal_features"}
#: Keys only given with ``extras=True``.
EXTRAS = ("site_energies", "atom_fea", "crystal_fea")


def split_prediction(
    prediction: Any, n_atoms: torch.Tensor, extras: bool = False
) -> list[dict[str, np.ndarray]]:
    """Split a batch Prediction into per-structure numpy dicts (one host copy per field).

    Keys (the reference's): ``e`` () eV/atom, ``f`` (n, 3) eV/Å, ``s`` (3, 3) GPa, ``m`` (n,)
    μB, and with ``extras``: ``site_energies`` (n,) eV, ``atom_fea`` (n, A), ``crystal_fea``
    (A,). A field the prediction lacks is left out.
    """
    sizes = n_atoms.tolist()
    energy = prediction.energy.detach().cpu().numpy()
    wanted = {**PER_ATOM, **PER_STRUCTURE}
    host = {}
    for key, attribute in wanted.items():
        value = getattr(prediction, attribute)
        if value is not None and (extras or key not in EXTRAS):
            host[key] = value.detach().cpu().numpy()
    cuts = np.cumsum(sizes)[:-1]
    per_atom = {k: np.split(host[k], cuts) for k in PER_ATOM if k in host}
    out = []
    for index in range(len(sizes)):
        item = {"e": energy[index]}
        item |= {k: parts[index] for k, parts in per_atom.items()}
        item |= {k: host[k][index] for k in PER_STRUCTURE if k in host}
        out.append(item)
    return out
