"""``StructureData``, the loaders and ``Trainer`` of the reference, run by our training.

``Trainer(model, ...).train(train_loader, val_loader, test_loader, save_dir=)`` writes the
loaders' structures into a graph cache (split-tagged, so the user's split is kept), maps its
settings onto a ``TrainConfig`` and runs ``fastchgnet.train.run.train``; the trained weights are
loaded back into ``model`` (as the reference trains in place). Units as the reference's
``StructureData``: energies eV/atom, forces eV/Å, stresses VASP kBar (x -0.1 -> GPa, here,
once), magmoms μB.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.core import Structure

from fastchgnet.compat.model import unsupported
from fastchgnet.data.frame import Frame
from fastchgnet.data.sources import from_structures
from fastchgnet.units import KBAR_TO_GPA

_LABELS = ("energies", "forces", "stresses", "magmoms", "structure_ids")


class StructureData:
    """Structures and labels (reference units, see the module docstring), in memory."""

    def __init__(
        self,
        structures: Sequence[Structure],
        energies: Sequence[float],
        forces: Sequence[Any],
        *,
        stresses: Sequence[Any] | None = None,
        magmoms: Sequence[Any] | None = None,
        structure_ids: Sequence[Any] | None = None,
        graph_converter: Any = None,
        shuffle: bool = True,
    ) -> None:
        for index, structure in enumerate(structures):
            if not isinstance(structure, Structure):
                raise TypeError(f"{index} is not a pymatgen Structure object: {structure}")
        given = dict(
            zip(_LABELS, (energies, forces, stresses, magmoms, structure_ids), strict=True)
        )
        for name, labels in given.items():
            if labels is not None and len(labels) != len(structures):
                raise RuntimeError(
                    f"Inconsistent number of structures and labels: {len(structures)=}, "
                    f"len({name})={len(labels)}"
                )
        if graph_converter is not None:
            raise unsupported("graph_converter", "the model's cutoffs build the graphs")
        self.structures, self.energies, self.forces = list(structures), energies, forces
        self.stresses, self.magmoms, self.structure_ids = stresses, magmoms, structure_ids
        self.keys = np.arange(len(structures))
        if shuffle:
            random.shuffle(self.keys)

    def __len__(self) -> int:
        return len(self.structures)

    def frames(self, positions: Sequence[int]) -> Iterator[Frame]:
        """Frames (our units) of the dataset positions ``positions`` (shuffled order)."""
        keys = [int(self.keys[p]) for p in positions]
        stress = None
        if self.stresses is not None:
            stress = [np.asarray(self.stresses[k], dtype=np.float64) * KBAR_TO_GPA for k in keys]
        frames = from_structures(
            [self.structures[k] for k in keys],
            [self.energies[k] for k in keys],
            [self.forces[k] for k in keys],
            stress,
            None if self.magmoms is None else [self.magmoms[k] for k in keys],
        )
        for key, frame in zip(keys, frames, strict=True):
            ids = self.structure_ids
            frame.material_id = str(ids[key]) if ids is not None else f"structure-{key}"
            frame.frame_id = str(key)
            yield frame


@dataclass
class StructureLoader:
    """The structures of one split of a ``StructureData`` and the batch size to train with."""

    dataset: StructureData
    indices: list[int]
    batch_size: int

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        raise unsupported("iterating a loader", "pass it to Trainer.train")


def get_train_val_test_loader(
    dataset: StructureData,
    *,
    batch_size: int = 64,
    train_ratio: float = 0.8,
    val_ratio: float = 0.1,
    return_test: bool = True,
    num_workers: int = 0,
    pin_memory: bool = True,
) -> tuple[StructureLoader, ...]:
    """Random train/val(/test) partition of ``dataset``, as the reference."""
    indices = list(range(len(dataset)))
    random.shuffle(indices)
    n_train, n_val = int(train_ratio * len(indices)), int(val_ratio * len(indices))
    parts = [indices[:n_train], indices[n_train : n_train + n_val]]
    if return_test:
        parts.append(indices[n_train + n_val :])
    return tuple(StructureLoader(dataset, part, batch_size) for part in parts)


def get_loader(dataset: StructureData, *, batch_size: int = 64, **_: Any) -> StructureLoader:
    """All of ``dataset`` as one loader."""
    return StructureLoader(dataset, list(range(len(dataset))), batch_size)
