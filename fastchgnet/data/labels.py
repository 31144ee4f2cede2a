"""LabelBatch: training targets of a batch as flat tensors with masks; and collate_labels.

A missing label (no magmoms in a VASP run without them, say) has mask False; its slot holds 0
only so the tensor has a value there, and every loss and metric must select by the mask.
Units as everywhere: energy eV/atom, forces eV/Å, stress GPa (CHGNet's sign), magmoms μB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from fastchgnet.data.batch import moved_to, pinned

#: name -> (shape, level, meaning)
LABEL_FIELDS: dict[str, tuple[str, str, str]] = {
    "energy": ("(n_structures,) float", "structure", "energy per atom, eV/atom"),
    "energy_mask": ("(n_structures,) bool", "structure", "energy label present"),
    "forces": ("(n_atoms, 3) float", "atom", "forces, eV/Å"),
    "forces_mask": ("(n_atoms,) bool", "atom", "force label present for this atom"),
    "stress": ("(n_structures, 3, 3) float", "structure", "stress, GPa, CHGNet's sign"),
    "stress_mask": ("(n_structures,) bool", "structure", "stress label present"),
    "magmoms": ("(n_atoms,) float", "atom", "magnetic moment magnitudes, μB"),
    "magmoms_mask": ("(n_atoms,) bool", "atom", "magmom label present for this atom"),
}


class FrameLabels(Protocol):
    """What collate_labels reads from each structure's labels (e.g. data.cache.Labels)."""

    energy_per_atom: float | None
    forces: np.ndarray | None
    stress: np.ndarray | None
    magmoms: np.ndarray | None


@dataclass
class LabelBatch:
    """Targets of a batch, aligned with its GraphBatch. Shapes: see ``LABEL_FIELDS``."""

    energy: Tensor
    energy_mask: Tensor
    forces: Tensor
    forces_mask: Tensor
    stress: Tensor
    stress_mask: Tensor
    magmoms: Tensor
    magmoms_mask: Tensor

    def to(
        self,
        device: torch.device | str,
        dtype: torch.dtype | None = None,
        non_blocking: bool = True,
    ) -> LabelBatch:
        """Move to ``device``; float fields are cast to ``dtype`` when given (``non_blocking``:
        see ``GraphBatch.to``)."""
        return moved_to(self, device, dtype, non_blocking)

    def pin_memory(self) -> LabelBatch:
        """A copy in page-locked host memory (``DataLoader(pin_memory=True)`` calls this)."""
        return pinned(self)


def collate_labels(
    labels: Sequence[FrameLabels], n_atoms: Sequence[int], dtype: torch.dtype = torch.float32
) -> LabelBatch:
    """Concatenate per-structure labels in the order of ``collate``'s structures.

    Args:
        labels: one entry per structure; ``None`` fields are missing labels.
        n_atoms: atoms of each structure (checks per-atom label lengths).
        dtype: float dtype of the label tensors.

    Raises:
        ValueError: a per-atom label whose length is not the structure's atom count.
    """
    if len(labels) != len(n_atoms):
        raise ValueError(f"{len(labels)} labels for {len(n_atoms)} structures")
    n_structures, total_atoms = len(labels), int(sum(n_atoms))
    energy = np.zeros(n_structures)
    energy_mask = np.zeros(n_structures, dtype=bool)
    stress = np.zeros((n_structures, 3, 3))
    stress_mask = np.zeros(n_structures, dtype=bool)
    forces = np.zeros((total_atoms, 3))
    forces_mask = np.zeros(total_atoms, dtype=bool)
    magmoms = np.zeros(total_atoms)
    magmoms_mask = np.zeros(total_atoms, dtype=bool)
    start = 0
    for k, (label, n) in enumerate(zip(labels, n_atoms, strict=True)):
        rows = slice(start, start + n)
        start += n
        if label.energy_per_atom is not None:
            energy[k], energy_mask[k] = label.energy_per_atom, True
        if label.stress is not None:
            stress[k], stress_mask[k] = np.asarray(label.stress).reshape(3, 3), True
        if label.forces is not None:
            forces[rows] = _per_atom(label.forces, (n, 3), "forces", k)
            forces_mask[rows] = True
        if label.magmoms is not None:
            magmoms[rows] = _per_atom(label.magmoms, (n,), "magmoms", k)
            magmoms_mask[rows] = True

    def tensor(array: np.ndarray) -> Tensor:
        out = torch.from_numpy(array)
        return out if array.dtype == bool else out.to(dtype)

    return LabelBatch(
        energy=tensor(energy),
        energy_mask=tensor(energy_mask),
        forces=tensor(forces),
        forces_mask=tensor(forces_mask),
        stress=tensor(stress),
        stress_mask=tensor(stress_mask),
        magmoms=tensor(magmoms),
        magmoms_mask=tensor(magmoms_mask),
    )


def _per_atom(value: np.ndarray, shape: tuple[int, ...], name: str, index: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"structure {index}: {name} has shape {array.shape}, expected {shape}")
    return array
