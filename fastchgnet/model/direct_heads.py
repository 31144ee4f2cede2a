"""FastCHGNet's direct heads: forces and stress read from the final features, no derivatives.

Force head (paper eq. 7). Every undirected bond ``b = (i, j, image)`` with vector
``r_b = r_j + image - r_i`` and unit vector ``u_b`` gets one scalar ``m_b`` (eV/Å) from its
final bond feature and the sum of its two atoms' final features. Atom ``i`` receives
``+m_b u_b`` and atom ``j`` receives ``-m_b u_b``, so F_i = sum_j m_ij u_ij with u_ij the unit
vector from i to j (m > 0 pulls i towards j). The magnitude is symmetric in (i, j) because the
model keeps one feature per undirected bond and ``a_i + a_j`` is symmetric, and u_ji = -u_ij:
the force of j on i is minus that of i on j (Newton's third law), so the net force on every
structure is zero up to rounding. Magnitudes are invariant features times unit vectors, so the
forces rotate with the structure, reflections included.

Virial stress head (default). A second, separate magnitude ``s_b`` per bond gives the virial
of central pair forces, in CHGNet's sign (the strain derivative of the energy over the volume):
S = (1/V) sum_b s_b r_b (x) u_b. For a pair energy E = sum_b phi(|r_b|) with s_b = phi'(|r_b|)
this is exactly the conservative stress (tested). It is symmetric (r_b (x) u_b = |r_b| u_b (x) u_b),
transforms as R S R^T, and does not depend on the unit cell: a supercell has n times the bonds
and n times the volume.

Lattice stress head (the paper's eq. 9, our reading). Unit lattice normals n_k (cross products
of lattice vectors) combined with a symmetric 3x3 matrix C read from the mean final atom
feature: S = N^T C N, N the (3, 3) rows n_k. Symmetric and rotation-equivariant, but C does not
follow a change of lattice basis, so the same crystal described by another cell (e.g. a1 + a2,
a2, a3) gets another stress: kept for comparison, not the default.

Both magnitudes are multiplied by the radial envelope of the atom graph, so forces and stress
go to zero smoothly as a bond reaches the 6 Å cutoff.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastchgnet.data.batch import GraphBatch
from fastchgnet.model.basis import polynomial_envelope
from fastchgnet.model.layers import gather, mlp, norm_or_identity, scatter_sum
from fastchgnet.units import EV_PER_A3_TO_GPA

#: Initial scale of the virial head's last layer (see DirectHeads).
VIRIAL_INIT_SCALE = 0.01


def pair_forces(magnitudes: Tensor, units: Tensor, ends: Tensor, n_atoms: int) -> Tensor:
    """Forces of central pair interactions: atom i gets +m_b u_b, atom j gets -m_b u_b.

    Args:
        magnitudes: (n_bonds,) m_b, eV/Å (positive: attraction).
        units: (n_bonds, 3) unit vectors from i to j.
        ends: (2 * n_bonds,) every bond's i, then every bond's j (``pair_ends``).
        n_atoms: number of atoms in the batch.

    Returns:
        (n_atoms, 3) forces, eV/Å.
    """
    pair = magnitudes.unsqueeze(1) * units
    return scatter_sum(torch.cat([pair, -pair]), ends, n_atoms)


def pair_atom_sums(atoms: Tensor, ends: Tensor) -> Tensor:
    """a_i + a_j of every bond: atoms (n_atoms, A), ``ends`` (2 * n_bonds,) from ``pair_ends``
    -> (n_bonds, A).

    One gather of both ends summed over the two halves (the same sums to the bit). Its backward
    is one scatter sum of a contiguous gradient by a contiguous index: aten's fast path (see
    ``pair_ends``). Two gathers by the columns of ``bond_atoms`` gave two scatters by a strided
    index, the generic path (about 5x slower a call at 64 columns)."""
    return gather(atoms, ends).view(2, -1, atoms.shape[1]).sum(0)


def pair_virial(
    magnitudes: Tensor, vectors: Tensor, bond_structure: Tensor, volume: Tensor
) -> Tensor:
    """Virial stress of central pair forces, GPa, CHGNet's sign: (1/V) sum_b m_b r_b (x) u_b.

    Args:
        magnitudes: (n_bonds,) m_b, eV/Å, as in ``pair_forces``.
        vectors: (n_bonds, 3) bond vectors r_j + image - r_i, Å.
        bond_structure: (n_bonds,) structure of each bond.
        volume: (n_structures,) cell volumes, Å^3.

    Returns:
        (n_structures, 3, 3) symmetric stress, GPa.
    """
    lengths = torch.linalg.vector_norm(vectors, dim=1)
    weights = magnitudes / lengths  # m_b r_b (x) u_b = (m_b / |r_b|) r_b (x) r_b
    outer = (weights[:, None, None] * vectors[:, :, None] * vectors[:, None, :]).reshape(-1, 9)
    summed = scatter_sum(outer, bond_structure, volume.shape[0])
    return summed.reshape(-1, 3, 3) * (EV_PER_A3_TO_GPA / volume)[:, None, None]


def lattice_normals(lattice: Tensor) -> Tensor:
    """Unit normals of the lattice planes: rows a2 x a3, a3 x a1, a1 x a2, normalised.

    (n_structures, 3, 3) lattice vectors as rows, Å -> (n_structures, 3, 3) unit normals as rows.
    """
    a1, a2, a3 = lattice.unbind(dim=1)
    normals = torch.stack(
        [torch.linalg.cross(a2, a3), torch.linalg.cross(a3, a1), torch.linalg.cross(a1, a2)],
        dim=1,
    )
    return normals / torch.linalg.vector_norm(normals, dim=2, keepdim=True)


class PairMagnitude(nn.Module):
    """One scalar per undirected bond, symmetric in its two atoms, eV/Å.

    m_b = MLP(norm([b_b, a_i + a_j])) * envelope(|r_b| / cutoff).
    """

    def __init__(
        self,
        atom_dim: int,
        bond_dim: int,
        hidden_dims: Sequence[int],
        norm: str | None,
        cutoff: float,
        envelope_order: int,
    ):
        super().__init__()
        self.cutoff = float(cutoff)
        self.envelope_order = int(envelope_order)
        self.norm = norm_or_identity(norm, bond_dim + atom_dim)
        self.mlp = mlp(bond_dim + atom_dim, hidden_dims, 1)

    def forward(self, pair_atoms: Tensor, bonds: Tensor, lengths: Tensor) -> Tensor:
        """pair_atoms (n_bonds, A) a_i + a_j (``pair_atom_sums``), bonds (n_bonds, B),
        lengths (n_bonds,) Å -> (n_bonds,) magnitudes."""
        raw = self.mlp(self.norm(torch.cat([bonds, pair_atoms], dim=1))).squeeze(1)
        return raw * polynomial_envelope(lengths / self.cutoff, self.envelope_order)


class LatticeStressHead(nn.Module):
    """The paper's stress head (our reading): S = N^T C N, GPa.

    N: unit lattice normals as rows; C: symmetric 3x3 from the structure's mean of
    MLP(norm(a_i)) (6 numbers per atom).
    """

    def __init__(self, atom_dim: int, hidden_dims: Sequence[int], norm: str | None):
        super().__init__()
        self.norm = norm_or_identity(norm, atom_dim)
        self.mlp = mlp(atom_dim, hidden_dims, 6)
        rows, cols = torch.triu_indices(3, 3)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(
        self, atoms: Tensor, atom_structure: Tensor, n_atoms: Tensor, lattice: Tensor
    ) -> Tensor:
        """atoms (n_atoms, A), atom_structure (n_atoms,), n_atoms (n_structures,),
        lattice (n_structures, 3, 3) -> (n_structures, 3, 3) stress, GPa."""
        n_structures = lattice.shape[0]
        per_atom = self.mlp(self.norm(atoms))  # (n_atoms, 6)
        summed = scatter_sum(per_atom, atom_structure, n_structures)
        mean = summed / n_atoms.clamp(min=1).to(summed.dtype).unsqueeze(1)
        upper = mean.new_zeros(n_structures, 3, 3)
        upper[:, self.rows, self.cols] = mean
        coefficients = (upper + upper.transpose(1, 2)) / 2
        normals = lattice_normals(lattice)
        return normals.transpose(1, 2) @ coefficients @ normals


class DirectHeads(nn.Module):
    """Forces (pair head) and stress (virial or lattice head) from the final features."""

    def __init__(
        self,
        atom_dim: int,
        bond_dim: int,
        hidden_dims: Sequence[int],
        norm: str | None,
        cutoff: float,
        envelope_order: int,
        stress_head: str,
    ):
        super().__init__()
        pair_args = (atom_dim, bond_dim, hidden_dims, norm, cutoff, envelope_order)
        self.force_magnitude = PairMagnitude(*pair_args)
        self.stress_kind = stress_head
        self.stress_magnitude = PairMagnitude(*pair_args) if stress_head == "virial" else None
        if self.stress_magnitude is not None:
            # (1/V) sum_b over ~30 bonds per atom of m_b |r_b| (x) 160 GPa/(eV/Å^3) is ~100x the
            # per-bond scale: start the last layer 100x smaller so a new model's stress is ~GPa
            with torch.no_grad():
                self.stress_magnitude.mlp[-1].weight.mul_(VIRIAL_INIT_SCALE)
                self.stress_magnitude.mlp[-1].bias.mul_(VIRIAL_INIT_SCALE)
        self.lattice_stress = (
            LatticeStressHead(atom_dim, hidden_dims, norm) if stress_head == "lattice" else None
        )

    def forward(
        self,
        batch: GraphBatch,
        atoms: Tensor,
        bonds: Tensor,
        vectors: Tensor,
        ends: Tensor,
        *,
        compute_forces: bool,
        compute_stress: bool,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Final atoms (n_atoms, A) and bonds (n_bonds, B), bond vectors (n_bonds, 3) Å and
        their atoms' indices ``ends`` (2 * n_bonds,), ``pair_ends(batch.bond_atoms)`` ->
        forces (n_atoms, 3) eV/Å or None, stress (n_structures, 3, 3) GPa or None."""
        lengths = torch.linalg.vector_norm(vectors, dim=1)
        forces = stress = None
        pair_heads = compute_forces or (compute_stress and self.stress_magnitude is not None)
        # both pair heads read the same a_i + a_j: gathered once, one scatter in the backward
        pair_atoms = pair_atom_sums(atoms, ends) if pair_heads else None
        if compute_forces:
            magnitudes = self.force_magnitude(pair_atoms, bonds, lengths)
            units = vectors / lengths.unsqueeze(1)
            forces = pair_forces(magnitudes, units, ends, atoms.shape[0])
        if compute_stress and self.stress_magnitude is not None:
            magnitudes = self.stress_magnitude(pair_atoms, bonds, lengths)
            stress = pair_virial(
                magnitudes, vectors, batch.bond_structure, structure_volume(batch.lattice)
            )
        elif compute_stress and self.lattice_stress is not None:
            stress = self.lattice_stress(atoms, batch.atom_structure, batch.n_atoms, batch.lattice)
        return forces, stress


def structure_volume(lattice: Tensor) -> Tensor:
    """(n_structures, 3, 3) lattice rows, Å -> (n_structures,) cell volume |a1 · (a2 x a3)|,
    Å^3. The closed-form triple product, not ``torch.linalg.det``: LU factorisations have
    CUDA-graph capture problems, and this is a handful of fused multiply-adds."""
    a1, a2, a3 = lattice.unbind(dim=1)
    return (a1 * torch.linalg.cross(a2, a3)).sum(dim=1).abs()
