"""The one potential interface: ``predict_graphs(graphs, stress=, forces=, features=)``.

Everything that runs a model on structures goes through a ``Potential``: batched prediction
(``predict_structures``, ``FastCHGNet.predict_structure``), the ASE calculator, relaxation and
molecular dynamics. ``EagerPotential`` runs a FastCHGNet as it is (any batch shape);
``fastchgnet.compile.CompiledPotential`` pads the graphs to a few fixed capacities and runs
the captured model (with TorchScript: unpadded, its graphs take any sizes).
``Prediction.split`` is the one per-structure split.

Units: energy eV/atom (``total_energy`` eV), forces eV/Å, stress GPa (CHGNet's sign), magnetic
moments μB, site energies eV.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from fastchgnet.data.batch import collate
from fastchgnet.data.graph import CrystalGraph, build_graph, element_symbol, structure_name
from fastchgnet.errors import StructureError
from fastchgnet.model.config import ModelConfig
from fastchgnet.numerics import flush_denormals

if TYPE_CHECKING:
    from fastchgnet.model.chgnet import FastCHGNet, Prediction


@runtime_checkable
class Potential(Protocol):
    """A model that predicts crystal graphs: ``config`` (cutoffs, elements) and
    ``predict_graphs(graphs, stress=, forces=, features=) -> Prediction`` of exactly those
    graphs (energy (S,), total_energy (S,), forces (N, 3) and stress (S, 3, 3) when asked,
    else None, magmoms (N,), site_energies (N,); with ``features`` atom (N, A) and crystal
    (S, A) features). Neither forces nor stress asked: the energy needs no derivative."""

    config: ModelConfig

    def predict_graphs(
        self,
        graphs: Sequence[CrystalGraph],
        *,
        stress: bool,
        forces: bool = True,
        features: bool = False,
    ) -> Prediction: ...


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block (no derivative graph kept), then as it was.

    A model already in eval mode is left alone: ``Module.train`` walks every submodule, which
    costs about 2 ms per call, a tenth of an 8-atom MD step."""
    was_training = model.training
    if not was_training:
        yield
        return
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def frozen(parameters: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """``parameters`` that require a gradient set not to for the block, then back.

    An inference call that differentiates only by positions and strain (forces, stress) then
    records no weight paths: autograd keeps no layer inputs for weight gradients and makes no
    nodes for the weights' transposes, so activations are freed sooner. The 8-atom LiMnO2
    force call took 16.5 against 17.2 ms (2 threads), and the toggle costs about 30 us for
    the 115 tensors. Not for a model that another thread trains at the same time."""
    trainable = [p for p in parameters if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


class EagerPotential:
    """A FastCHGNet run as it is, one model call per ``predict_graphs``."""

    def __init__(self, model: FastCHGNet) -> None:
        self.model = model
        self.config: ModelConfig = model.config
        # listing them costs about 0.1 ms: once (a module keeps its Parameter objects when
        # moved, cast or loaded; one replaced later is only left out of ``frozen``)
        self.parameters = list(model.parameters())

    def predict_graphs(
        self,
        graphs: Sequence[CrystalGraph],
        *,
        stress: bool,
        forces: bool = True,
        features: bool = False,
    ) -> Prediction:
        """One eager model call on ``graphs`` (see ``Potential``), in eval mode, with the
        weights ``frozen`` (no gradient for them is taken); under ``torch.inference_mode`` too
        (forces and stress are derivatives: the batch is made outside it). Without ``forces``
        and ``stress`` the call is the forward alone (no backward pass)."""
        parameter = next(self.model.parameters())  # the model's dtype and device now
        with torch.inference_mode(False):
            batch = collate(graphs, dtype=parameter.dtype).to(parameter.device)
            with eval_mode(self.model), flush_denormals(), frozen(self.parameters):
                return self.model(
                    batch,
                    compute_forces=forces,
                    compute_stress=stress,
                    return_features=features,
                )


def as_potential(model: Any) -> Potential:
    """``model`` if it is a ``Potential`` already, else a FastCHGNet as an ``EagerPotential``."""
    return model if isinstance(model, Potential) else EagerPotential(model)


def check_elements(graph: CrystalGraph, max_num_elements: int) -> None:
    """Raise ``StructureError`` if the graph holds an element the model has no embedding for."""
    too_heavy = graph.atomic_numbers > max_num_elements
    if too_heavy.any():
        z = sorted(set(graph.atomic_numbers[too_heavy].tolist()))
        named = ", ".join(f"{element_symbol(k)} (Z={k})" for k in z)
        known = f"{element_symbol(1)} to {element_symbol(max_num_elements)}"
        raise StructureError(
            graph.name, f"element(s) {named} beyond the model's {max_num_elements} ({known})"
        )


def graphs_for(
    config: ModelConfig, structures: Sequence[Any], start: int = 0, allow_isolated: bool = False
) -> list[CrystalGraph]:
    """Build and check the graphs of ``structures`` (pymatgen or ASE) for a model ``config``
    (``allow_isolated``: see ``build_graph``).

    Raises:
        StructureError: naming the structure (and its position) and the problem.
    """
    graphs = []
    for offset, structure in enumerate(structures):
        name = structure_name(structure, start + offset)
        graph = build_graph(
            structure,
            config.atom_cutoff,
            config.bond_cutoff,
            name=name,
            allow_isolated=allow_isolated,
        )
        check_elements(graph, config.max_num_elements)
        graphs.append(graph)
    return graphs


def is_structure(obj: object) -> bool:
    """True for one pymatgen Structure or ASE Atoms (both are also sequences, of sites)."""
    return hasattr(obj, "get_scaled_positions") or (
        hasattr(obj, "lattice") and hasattr(obj, "frac_coords")
    )


def not_a_structure(obj: Any, expected: str = "a pymatgen Structure or ASE Atoms") -> TypeError:
    """The one-line TypeError for ``obj`` given where ``expected`` was: it names the type, and
    how a dict or a path becomes a Structure."""
    return TypeError(
        f"expected {expected}, got {type(obj).__name__} (a dict: Structure.from_dict; a path: "
        "Structure.from_file)"
    )


def structure_list(structure: Any) -> tuple[list[Any], bool]:
    """(the structures, whether one was given) of one pymatgen Structure / ASE Atoms or a
    sequence of them; anything else (a dict, a path, a number) is ``not_a_structure``."""
    single = is_structure(structure)
    if isinstance(structure, dict | str) or not (single or hasattr(structure, "__iter__")):
        raise not_a_structure(structure, "a pymatgen Structure, ASE Atoms or a sequence of them")
    return ([structure] if single else list(structure)), single


#: ``predict_structures``' keys (the reference's) -> Prediction fields
REFERENCE_KEYS = {"e": "energy", "f": "forces", "s": "stress", "m": "magmoms"}
#: extra keys with ``features=True``
FEATURE_KEYS = {
    "site_energies": "site_energies",
    "atom_fea": "atom_features",
    "crystal_fea": "crystal_features",
}


def predict_structures(
    model: Any, structure: Any, batch_size: int = 16, *, features: bool = False
) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
    """Predict energy, forces, stress and magnetic moments of one structure or a list.

    Args:
        model: a ``Potential`` (e.g. a ``CompiledPotential``) or a FastCHGNet (run eagerly).
        structure: one pymatgen Structure / ASE Atoms, or a sequence of them.
        batch_size: structures per model call; the largest go first, one compiled shape
            (sized for the largest of each count over the batches) serves them all, and
            results come back in input order.
        features: also return ``site_energies`` (n,) eV, ``atom_fea`` (n, A), ``crystal_fea``
            (A,).

    Returns:
        Per structure a dict of numpy arrays: ``e`` () eV/atom, ``f`` (n, 3) eV/Å,
        ``s`` (3, 3) GPa, ``m`` (n,) μB. A single structure gives one dict, a sequence a list.
    """
    structures, single = structure_list(structure)
    check_batch_size(batch_size)
    potential = as_potential(model)
    graphs = graphs_for(potential.config, structures)
    results = predict_graph_list(potential, graphs, batch_size, features=features)
    return results[0] if single else results


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` if it is an int >= 1, else a one-line TypeError or ValueError naming it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(
            f"batch_size must be an int >= 1, got {batch_size!r} ({type(batch_size).__name__})"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size}")
    return int(batch_size)


def predict_graph_list(
    model: Any,
    graphs: Sequence[CrystalGraph],
    batch_size: int = 16,
    *,
    features: bool = False,
    forces: bool = True,
    stress: bool = True,
    done: Callable[[list[int], list[dict[str, np.ndarray]]], None] | None = None,
) -> list[dict[str, np.ndarray]]:
    """``predict_structures`` on crystal graphs already built (always a list); without
    ``forces`` or ``stress`` their keys are left out (and, both left out, not computed). A
    potential with ``reserve`` (``CompiledPotential``) is first given every batch, so that one
    capacity, one compiled shape, holds them all. ``done(indices, results)`` is told each
    batch's results (indices into ``graphs``) as they come: a caller stopped halfway keeps them."""
    batch_size = check_batch_size(batch_size)
    potential = as_potential(model)
    cost = [g.n_atoms + g.n_bonds + g.n_angles for g in graphs]
    order = sorted(range(len(graphs)), key=lambda k: -cost[k])
    keys = {**REFERENCE_KEYS, **(FEATURE_KEYS if features else {})}
    results: list[dict[str, np.ndarray]] = [{} for _ in graphs]
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    reserve = getattr(potential, "reserve", None)  # a padded potential: one shape for all
    if reserve is not None:
        reserve([[graphs[k] for k in chunk] for chunk in chunks])
    for chunk in chunks:
        chosen = [graphs[k] for k in chunk]
        prediction = potential.predict_graphs(
            chosen, stress=stress, forces=forces, features=features
        )
        parts = prediction.split([g.n_atoms for g in chosen])
        for k, part in zip(chunk, parts, strict=True):
            results[k] = {key: part[field] for key, field in keys.items() if field in part}
        if done is not None:
            done(chunk, [results[k] for k in chunk])
    return results
