"""chgnet's ``CrystalGraphConverter`` over our graph builder (``fastchgnet.data.graph``).

``converter(structure, graph_id=, mp_id=)`` returns a ``ReferenceGraph``: our ``CrystalGraph``
(``predict_graph`` takes it) carrying chgnet's ``graph_id``, ``mp_id`` and ``composition``.
It has none of chgnet's tensor fields (``atom_graph``, ``bond_graph``, ``neighbor_image``,
``directed2undirected``, ``undirected2directed``): its bonds are ``bond_atoms`` /
``bond_images`` and its angles ``angle_edges`` (see ``CrystalGraph``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastchgnet.data.graph import CrystalGraph
from fastchgnet.model.config import ModelConfig
from fastchgnet.model.potential import graphs_for

#: chgnet's graph algorithms; both build the same graph there, and here both are ours.
ALGORITHMS = ("fast", "legacy")


@dataclass(frozen=True)
class ReferenceGraph(CrystalGraph):
    """A ``CrystalGraph`` with chgnet's identifiers (None when not given)."""

    graph_id: str | None = None
    mp_id: str | None = None

    @property
    def composition(self) -> str:
        """The formula, as chgnet's ``CrystalGraph.composition`` ("Li2 Mn2 O4")."""
        from pymatgen.core import Composition, Element

        counts: dict[str, float] = {}
        for z in self.atomic_numbers.tolist():
            symbol = Element.from_Z(z).symbol
            counts[symbol] = counts.get(symbol, 0) + 1
        return Composition(counts).formula


class CrystalGraphConverter:
    """Structure -> graph with ``atom_graph_cutoff`` / ``bond_graph_cutoff`` (Å), as chgnet's.

    ``algorithm`` ("fast" or "legacy") is recorded for chgnet's scripts; both run our
    builder, which gives chgnet's edge set. ``on_isolated_atoms``: see
    ``set_isolated_atom_response``.
    """

    def __init__(
        self,
        atom_graph_cutoff: float = 6,
        bond_graph_cutoff: float | None = 3,
        algorithm: str = "fast",
        on_isolated_atoms: str = "error",
        verbose: bool = False,
        *,
        config: ModelConfig | None = None,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"CrystalGraphConverter: algorithm={algorithm!r}: use 'fast'")
        bond_graph_cutoff = atom_graph_cutoff if bond_graph_cutoff is None else bond_graph_cutoff
        if config is None:
            config = ModelConfig(atom_cutoff=atom_graph_cutoff, bond_cutoff=bond_graph_cutoff)
        self.config = config  # the cutoffs and the elements the graphs are checked against
        self.atom_graph_cutoff, self.bond_graph_cutoff = atom_graph_cutoff, bond_graph_cutoff
        self.algorithm = algorithm
        self.set_isolated_atom_response(on_isolated_atoms)
        if verbose:
            print(self)

    @classmethod
    def for_model(cls, config: ModelConfig, on_isolated_atoms: str = "error") -> Any:
        """The converter of a model with ``config`` (its cutoffs, its element range)."""
        return cls(config.atom_cutoff, config.bond_cutoff, "fast", on_isolated_atoms, config=config)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(algorithm={self.algorithm!r}, "
            f"atom_graph_cutoff={self.atom_graph_cutoff:g}, "
            f"bond_graph_cutoff={self.bond_graph_cutoff:g})"
        )

    def as_dict(self) -> dict[str, Any]:
        """chgnet's converter settings: cutoffs (Å) and algorithm."""
        return {
            "atom_graph_cutoff": self.atom_graph_cutoff,
            "bond_graph_cutoff": self.bond_graph_cutoff,
            "algorithm": self.algorithm,
        }

    @classmethod
    def from_dict(cls, dct: dict[str, Any]) -> CrystalGraphConverter:
        """The converter of ``as_dict()``."""
        return cls(**dct)

    def set_isolated_atom_response(self, on_isolated_atoms: str) -> None:
        """What a structure with an isolated atom (no neighbour within the atom cutoff) gets:
        "error" (a StructureError naming it), "warn" (a warning, then predicted with that
        atom unbonded, as the reference) or "ignore" (predicted silently)."""
        if on_isolated_atoms not in ("ignore", "warn", "error"):
            raise ValueError(f"on_isolated_atoms={on_isolated_atoms!r}: ignore, warn or error")
        self.on_isolated_atoms = on_isolated_atoms

    def graphs(self, structures: Sequence[Any]) -> list[CrystalGraph]:
        """Graphs of ``structures`` under the isolated-atom setting."""
        allow = self.on_isolated_atoms != "error"
        graphs = graphs_for(self.config, structures, allow_isolated=allow)
        if self.on_isolated_atoms == "warn":
            for graph in graphs:
                degree = np.bincount(graph.bond_atoms.ravel(), minlength=graph.n_atoms)
                if (degree == 0).any():
                    isolated = np.flatnonzero(degree == 0)[:10].tolist()
                    warnings.warn(f"{graph.name}: isolated atom(s) {isolated}", stacklevel=3)
        return graphs

    def __call__(self, structure: Any, graph_id: Any = None, mp_id: Any = None) -> ReferenceGraph:
        """The graph of one structure, carrying ``graph_id`` and ``mp_id`` (as given)."""
        graph = self.graphs([structure])[0]
        fields = {key: getattr(graph, key) for key in graph.__dataclass_fields__}
        return ReferenceGraph(**fields, graph_id=graph_id, mp_id=mp_id)

    forward = __call__


__all__ = ["ALGORITHMS", "CrystalGraph", "CrystalGraphConverter", "ReferenceGraph"]
