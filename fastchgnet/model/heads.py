"""Readouts: energy per atom, magnetic moments, and the AtomRef composition energy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastchgnet.model.layers import mlp, norm_or_identity, scatter_sum


class EnergyReadout(nn.Module):
    """Site energies from final atom features: MLP(norm(a)) -> (n_atoms,) eV (no composition)."""

    def __init__(self, atom_dim: int, hidden_dims: Sequence[int], norm: str | None):
        super().__init__()
        self.norm = norm_or_identity(norm, atom_dim)
        self.mlp = mlp(atom_dim, hidden_dims, 1)

    def forward(self, atoms: Tensor) -> Tensor:
        """(n_atoms, A) -> (n_atoms,) site energies, eV."""
        return self.mlp(self.norm(atoms)).squeeze(1)


class MagmomReadout(nn.Module):
    """|linear(a)| (the reference), or |MLP(norm(a))| with ``hidden_dims``: magnetic moment
    magnitude per atom, μB."""

    def __init__(self, atom_dim: int, hidden_dims: Sequence[int] = (), norm: str | None = None):
        super().__init__()
        if hidden_dims:
            self.norm = norm_or_identity(norm, atom_dim)
            self.mlp = mlp(atom_dim, hidden_dims, 1)
        else:
            self.linear = nn.Linear(atom_dim, 1)

    def forward(self, atoms: Tensor) -> Tensor:
        """(n_atoms, A) -> (n_atoms,) μB."""
        if hasattr(self, "linear"):
            return self.linear(atoms).squeeze(1).abs()
        return self.mlp(self.norm(atoms)).squeeze(1).abs()


class AtomRef(nn.Module):
    """Composition energy: one fitted reference energy per element (eV/atom), not trained.

    The weights come from a checkpoint (reference import) or from ``fit``; a new model starts
    at zero.
    """

    def __init__(self, max_num_elements: int):
        super().__init__()
        self.energies = nn.Parameter(torch.zeros(max_num_elements), requires_grad=False)

    def forward(self, atomic_numbers: Tensor, owner: Tensor, n_atoms: Tensor) -> Tensor:
        """Mean reference energy per structure, (n_structures,) eV/atom."""
        site = self.energies[atomic_numbers - 1]
        return scatter_sum(site, owner, n_atoms.shape[0]) / n_atoms.clamp(min=1)

    @torch.no_grad()
    def fit(self, compositions: Tensor, energies_per_atom: Tensor) -> None:
        """Least-squares fit of per-element energies.

        Args:
            compositions: (n_structures, max_num_elements) atom fraction of each element.
            energies_per_atom: (n_structures,) eV/atom.
        """
        solution = torch.linalg.lstsq(
            compositions.double(), energies_per_atom.double().unsqueeze(1), driver="gelsd"
        ).solution
        self.energies.copy_(solution.squeeze(1).to(self.energies.dtype))
