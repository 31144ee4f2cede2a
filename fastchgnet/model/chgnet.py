"""FastCHGNet: the CHGNet architecture as plain eager modules over a flat GraphBatch.

The energy model (``encode`` and the readouts) maps geometry to site energies and magnetic
moments; the thin wrapper ``forward`` owns strain, positions, derivatives and units. No loop over
structures, no host synchronisation, no data-dependent branch: a batch without angles simply
has empty angle tensors.

Over 300 lines on purpose: the whole model (modules, geometry, both force modes, the
wrapper and its file/reference entry points) reads top to bottom in one file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from fastchgnet.data.batch import GraphBatch, host_arrays
from fastchgnet.model.basis import FourierBasis, RadialBessel, angle_between
from fastchgnet.model.config import ModelConfig
from fastchgnet.model.direct_heads import DirectHeads, structure_volume
from fastchgnet.model.double_backward import second_derivative
from fastchgnet.model.gradient import scale_gradient
from fastchgnet.model.heads import AtomRef, EnergyReadout, MagmomReadout
from fastchgnet.model.io import load_model, save_model
from fastchgnet.model.layers import (
    AngleUpdate,
    AtomConv,
    BondConv,
    Topology,
    angle_weights,
    gather,
    pair_ends,
    scatter_sum,
)
from fastchgnet.model.precision import autocast, check_precision
from fastchgnet.units import EV_PER_A3_TO_GPA


def row_times_matrix(rows: Tensor, matrices: Tensor) -> Tensor:
    """Each row times its own matrix: (n, i) and (n, i, j) -> (n, j).

    A batched product, not ``einsum``: the same numbers, and the symbolic trace of the LiMnO2
    force-and-stress graph took 1.64 s instead of 1.92 s (einsum works out its plan on the
    symbolic sizes); eager, 36 against 64 us forward and backward at 64 rows."""
    return torch.bmm(rows.unsqueeze(1), matrices).squeeze(1)


@dataclass
class Prediction:
    """Model outputs for a batch (units as CHGNet).

    energy (n_structures,) eV/atom, composition energy included |
    forces (n_atoms, 3) eV/Å or None | stress (n_structures, 3, 3) GPa or None |
    magmoms (n_atoms,) μB or None | total_energy (n_structures,) eV |
    site_energies (n_atoms,) eV, composition energy included (they sum to total_energy) |
    atom_features (n_atoms, A) read by the magnetic-moment head, or None |
    crystal_features (n_structures, A) sum over atoms of the normalised final atom features
    read by the energy MLP, or None (the last two only with ``return_features=True``)
    """

    energy: Tensor
    total_energy: Tensor
    forces: Tensor | None = None
    stress: Tensor | None = None
    magmoms: Tensor | None = None
    site_energies: Tensor | None = None
    atom_features: Tensor | None = None
    crystal_features: Tensor | None = None

    #: fields with one row per atom (the rest have one per structure)
    PER_ATOM = ("forces", "magmoms", "site_energies", "atom_features")

    def split(self, n_atoms: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Per structure, the fields that are set as numpy arrays (one host copy in all, per
        dtype): per-structure fields as their row, per-atom fields as the structure's rows.
        ``n_atoms``: atoms of each structure, in order (padding, if any, comes after)."""
        host = host_arrays(
            {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}
        )
        cuts = np.cumsum(n_atoms)
        starts = cuts - np.asarray(n_atoms)
        out = []
        for index, (a, b) in enumerate(zip(starts.tolist(), cuts.tolist(), strict=True)):
            out.append({k: v[a:b] if k in self.PER_ATOM else v[index] for k, v in host.items()})
        return out


class Encoded(NamedTuple):
    """Final features of a batch: atoms (n_atoms, A) after the last atom conv, bonds
    (n_bonds, B) after the last bond conv, magmoms (n_atoms,) μB, and the atom features
    (n_atoms, A) the magmom head reads (before the last atom conv)."""

    atoms: Tensor
    bonds: Tensor
    magmoms: Tensor
    magmom_atoms: Tensor


class FastCHGNet(nn.Module):
    """CHGNet with the reference architecture; ``FastCHGNet.from_reference("0.3.0")`` loads the
    pretrained weights. Keyword arguments mirror ``ModelConfig`` (defaults: the reference
    architecture, conservative forces, coupled updates), e.g.
    ``FastCHGNet(forces="direct", coupled_updates=False)`` is a randomly initialised FastCHGNet
    with force and stress heads and dependency elimination."""

    def __init__(self, config: ModelConfig | None = None, **kwargs: Any):
        super().__init__()
        if config is None:
            config = ModelConfig.from_dict(kwargs)
        elif kwargs:
            raise TypeError("pass either a ModelConfig or keyword arguments, not both")
        if config.n_conv < 2:
            raise ValueError("n_conv must be at least 2 (magmoms read out before the last conv)")
        self.config = c = config
        self.precision = "float32"  # a run-time choice, not saved: see set_precision
        a, b, t = c.atom_fea_dim, c.bond_fea_dim, c.angle_fea_dim
        self.atom_embedding = nn.Embedding(c.max_num_elements, a)
        self.radial_atom = RadialBessel(
            c.num_radial, c.atom_cutoff, c.cutoff_coeff, c.learnable_rbf
        )
        self.radial_bond = RadialBessel(
            c.num_radial, c.bond_cutoff, c.cutoff_coeff, c.learnable_rbf
        )
        # bond embedding and atom-graph bond weights read the same basis: one GEMM
        self.bond_projection = nn.Linear(c.num_radial, b + a, bias=False)
        self.bond_graph_weights = nn.Linear(c.num_radial, b, bias=False)
        self.angle_basis = FourierBasis((c.num_angular - 1) // 2, c.learnable_rbf)
        self.angle_embedding = nn.Linear(c.num_angular, t, bias=False)
        bias = c.mlp_out_bias
        self.atom_convs = nn.ModuleList(
            AtomConv(a, b, c.atom_conv_hidden_dim, c.gated_norm, bias) for _ in range(c.n_conv)
        )
        self.bond_convs = nn.ModuleList(
            BondConv(a, b, t, c.bond_conv_hidden_dim, c.gated_norm, bias)
            for _ in range(c.n_conv - 1)
        )
        self.angle_updates = nn.ModuleList(
            AngleUpdate(a, b, t, c.angle_hidden_dim, c.gated_norm) for _ in range(c.n_conv - 1)
        )
        self.magmom_readout = (
            MagmomReadout(a)
            if c.magmom_head == "linear"
            else MagmomReadout(a, c.head_hidden_dims, c.readout_norm)
        )
        self.energy_readout = EnergyReadout(a, c.mlp_hidden_dims, c.readout_norm)
        self.composition = AtomRef(c.max_num_elements)
        self.direct_heads = (
            DirectHeads(
                a,
                b,
                c.head_hidden_dims,
                c.readout_norm,
                c.atom_cutoff,
                c.cutoff_coeff,
                c.stress_head,
            )
            if c.forces == "direct"
            else None
        )

    def set_precision(self, precision: str, device_type: str | None = None) -> FastCHGNet:
        """Run the energy model in ``precision``, "float32" or "bf16" (bfloat16 matrix
        products; see ``fastchgnet.model.precision``), judged for ``device_type`` (where the
        model will run; default: where its parameters are now). Not saved. Returns the model."""
        parameter = next(self.parameters())  # bf16 of a float64 model: see check_precision
        where = device_type or parameter.device.type
        self.precision = check_precision(precision, where, parameter.dtype)
        return self

    def energy_model(
        self, batch: GraphBatch, vectors: Tensor, topo: Topology
    ) -> tuple[Tensor, Encoded]:
        """Site energies (n_atoms,) eV without composition and the encoding, from bond vectors
        (n_bonds, 3) Å, computed in ``self.precision``; returned in the vectors' dtype."""
        with autocast(self.precision, vectors.device.type):
            encoded = self.encode(batch, vectors, topo)
            site_energy = self.energy_readout(encoded.atoms)
        dtype = vectors.dtype
        return site_energy.to(dtype), Encoded(*(t.to(dtype) for t in encoded))

    @property
    def n_params(self) -> int:
        """Number of parameters (the fixed composition energies included, as the reference)."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        c = self.config
        stress = f", stress_head={c.stress_head!r}" if c.forces == "direct" else ""
        return (
            f"forces={c.forces!r}{stress}, coupled_updates={c.coupled_updates}, "
            f"magmom_head={c.magmom_head!r}, n_params={self.n_params:,}"
        )

    # ----------------------------------------------------------------- geometry
    @staticmethod
    def geometry(
        batch: GraphBatch, *, forces: bool, stress: bool, ends: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Positions, strain and bond vectors of a batch; ``ends`` (2 * n_bonds,) is
        ``pair_ends(batch.bond_atoms)`` where the caller has it (``Topology.edge_centre``).

        Returns:
            positions (n_atoms, 3) Å, a leaf requiring grad when ``forces``;
            strain (n_structures, 3, 3), a zero leaf requiring grad when ``stress``, else None;
            bond vectors r_j + image - r_i (n_bonds, 3) Å, with positions and lattices deformed
            by (1 + strain).
        """
        lattice = batch.lattice
        positions = row_times_matrix(batch.frac_coords, gather(lattice, batch.atom_structure))
        if forces:
            positions.requires_grad_(True)
        deformed = positions
        strain = None
        if stress:
            strain = torch.zeros_like(lattice, requires_grad=True)
            deformation = torch.eye(3, dtype=lattice.dtype, device=lattice.device) + strain
            deformed = row_times_matrix(positions, gather(deformation, batch.atom_structure))
            lattice = lattice @ deformation
        offsets = row_times_matrix(batch.bond_images, gather(lattice, batch.bond_structure))
        if ends is None:
            ends = pair_ends(batch.bond_atoms)
        i, j = ends.view(2, -1)  # stride-1 indices (see pair_ends)
        return positions, strain, gather(deformed, j) + offsets - gather(deformed, i)

    # ------------------------------------------------------------- energy model
    def encode(self, batch: GraphBatch, vectors: Tensor, topo: Topology) -> Encoded:
        """Final atom and bond features and magnetic moments from bond vectors (n_bonds, 3) Å."""
        lengths = torch.linalg.vector_norm(vectors, dim=1)
        units = vectors / lengths.unsqueeze(1)
        edge_units = torch.cat([units, -units])
        first, second = gather(edge_units, pair_ends(batch.angle_edges)).view(2, -1, 3)
        angle = angle_between(first, second)

        atoms = gather(self.atom_embedding.weight, batch.atomic_numbers - 1)
        bonds, atom_weights = self.bond_projection(self.radial_atom(lengths)).split(
            [self.config.bond_fea_dim, self.config.atom_fea_dim], dim=1
        )
        # bond-graph weights only for the bond graph's nodes: the short bonds, stored first
        bond_weights = self.bond_graph_weights(self.radial_bond(lengths[: batch.n_short_bonds]))
        pair_weights = angle_weights(bond_weights, topo)  # the same in every bond conv
        angles = self.angle_embedding(self.angle_basis(angle))

        magmoms = atoms.new_zeros(atoms.shape[0])
        magmom_atoms = atoms
        last = self.config.n_conv - 1
        for block in range(last):
            # the last block's angle update feeds nothing (only an atom conv follows): skipped,
            # as its output would be in the reference, so its parameters get no gradient
            update_angles = block < last - 1
            new_atoms = self.atom_convs[block](atoms, bonds, atom_weights, topo)
            if self.config.coupled_updates:
                bonds = self.bond_convs[block](new_atoms, bonds, pair_weights, angles, topo)
                if update_angles:
                    angles = self.angle_updates[block](new_atoms, bonds, angles, topo)
            else:
                new_bonds = self.bond_convs[block](atoms, bonds, pair_weights, angles, topo)
                if update_angles:
                    angles = self.angle_updates[block](atoms, bonds, angles, topo)
                bonds = new_bonds
            atoms = new_atoms
            if block == last - 1:
                magmoms = self.magmom_readout(atoms)
                magmom_atoms = atoms
        atoms = self.atom_convs[last](atoms, bonds, atom_weights, topo)
        return Encoded(atoms, bonds, magmoms, magmom_atoms)

    # ------------------------------------------------------------------ wrapper
    def forward(
        self,
        batch: GraphBatch,
        *,
        compute_forces: bool = True,
        compute_stress: bool = True,
        create_graph: bool | None = None,
        return_features: bool = False,
    ) -> Prediction:
        """Energy (eV/atom), forces (eV/Å), stress (GPa, CHGNet's sign), magnetic moments
        (μB) and site energies (eV) of every structure in ``batch``; with ``return_features``
        also atom and crystal features (see ``Prediction``).

        Conservative mode: forces -dE/dx and stress (1/V) dE/dstrain; ``create_graph``
        (default: ``self.training``) keeps the derivative graph so a loss on forces or stress
        can be back-propagated (second derivatives). Direct mode: forces and stress come from
        the heads, no derivative is taken (``create_graph`` is irrelevant).
        """
        if self.direct_heads is not None:
            site_energy, total, encoded, forces, stress = self._direct(
                batch, compute_forces, compute_stress
            )
        else:
            create_graph = self.training if create_graph is None else create_graph
            site_energy, total, encoded, forces, stress = self._conservative(
                batch, compute_forces, compute_stress, create_graph
            )
        n_atoms = batch.n_atoms.to(total.dtype)  # empty padding slots: 0 atoms, energy 0
        composition = self.composition(batch.atomic_numbers, batch.atom_structure, batch.n_atoms)
        prediction = Prediction(
            energy=total / n_atoms.clamp(min=1) + composition,
            total_energy=total + composition * n_atoms,
            forces=forces,
            stress=stress,
            magmoms=encoded.magmoms,
            site_energies=site_energy + self.composition.energies[batch.atomic_numbers - 1],
        )
        if return_features:
            normed = self.energy_readout.norm(encoded.atoms)
            prediction.atom_features = encoded.magmom_atoms
            prediction.crystal_features = scatter_sum(
                normed, batch.atom_structure, batch.n_structures
            )
        return prediction

    def _conservative(
        self, batch: GraphBatch, compute_forces: bool, compute_stress: bool, create_graph: bool
    ) -> tuple[Tensor, Tensor, Encoded, Tensor | None, Tensor | None]:
        """Site energies (n_atoms,) and totals (n_structures,) eV without composition, the
        encoding, -dE/dx and (1/V) dE/dstrain in GPa."""
        with torch.enable_grad():
            topo = Topology.of(batch)
            positions, strain, vectors = self.geometry(
                batch, forces=compute_forces, stress=compute_stress, ends=topo.edge_centre
            )
            with second_derivative(create_graph):
                site_energy, encoded = self.energy_model(batch, vectors, topo)
            total = scatter_sum(site_energy, batch.atom_structure, batch.n_structures)
            forces = stress = None
            inputs = [x for x in (positions, strain) if x is not None and x.requires_grad]
            if inputs:
                grads = torch.autograd.grad(
                    total.sum(), inputs, create_graph=create_graph, retain_graph=create_graph
                )
                if compute_forces:
                    forces = -grads[0]
                if strain is not None:
                    volume = structure_volume(batch.lattice)
                    stress = grads[-1] * (EV_PER_A3_TO_GPA / volume)[:, None, None]
        return site_energy, total, encoded, forces, stress

    def _direct(
        self, batch: GraphBatch, compute_forces: bool, compute_stress: bool
    ) -> tuple[Tensor, Tensor, Encoded, Tensor | None, Tensor | None]:
        """Site energies (n_atoms,) and totals (n_structures,) eV without composition, the
        encoding, head forces and stress; no autograd."""
        assert self.direct_heads is not None
        topo = Topology.of(batch)
        _, _, vectors = self.geometry(batch, forces=False, stress=False, ends=topo.edge_centre)
        site_energy, encoded = self.energy_model(batch, vectors, topo)
        total = scatter_sum(site_energy, batch.atom_structure, batch.n_structures)
        scale = self.config.head_feature_grad
        forces, stress = self.direct_heads(
            batch,
            scale_gradient(encoded.atoms, scale),
            scale_gradient(encoded.bonds, scale),
            vectors,
            topo.edge_centre,
            compute_forces=compute_forces,
            compute_stress=compute_stress,
        )
        return site_energy, total, encoded, forces, stress

    # ---------------------------------------------------------------- save/load
    def save(self, path: str | Path) -> None:
        """Write config and weights to ``path`` atomically (temp file, fsync, rename). Kept:
        the config and every weight in its dtype (float64 after ``double()``). Not kept: the
        run-time ``precision`` ("bf16"/"float32", ``set_precision``), device, train mode."""
        save_model(self, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> FastCHGNet:
        """A model written by ``save`` on ``map_location``, in eval mode: its stored config
        (checked) and weights in their saved dtype, bit for bit; ``precision`` "float32"."""
        return load_model(cls, path, map_location)

    @classmethod
    def from_reference(cls, version: str = "0.3.0", **modes: Any) -> FastCHGNet:
        """Load the pretrained weights shipped in the ``chgnet`` package ("0.3.0", "0.2.0",
        "r2scan"). Needs ``pip install chgnet``; never downloads anything.

        ``modes`` (``forces``, ``coupled_updates``, ...) may only restate the reference's own
        settings: the weights were trained for conservative forces with coupled updates, and
        any other mode raises ValueError instead of silently computing something else.
        """
        from fastchgnet.model.chgnet_files import load_reference

        return load_reference(cls, version, **modes)

    def predict_structure(self, structure: Any, batch_size: int = 16) -> Any:
        """Predict one structure or a list as the reference does, eagerly (e eV/atom, f eV/Å,
        s GPa, m μB); see ``fastchgnet.model.potential.predict_structures``, which also takes
        a ``CompiledPotential``."""
        from fastchgnet.model.potential import predict_structures

        return predict_structures(self, structure, batch_size=batch_size)
