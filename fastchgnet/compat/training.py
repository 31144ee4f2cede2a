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
import torch
from pymatgen.core import Structure

from fastchgnet.compat.graph import CrystalGraphConverter, ReferenceGraph
from fastchgnet.compat.labels import checked_stresses, flat_magmoms, present, warn_problems
from fastchgnet.compat.model import TORCH_DTYPE, unsupported
from fastchgnet.data.frame import Frame, check_frame
from fastchgnet.data.graph import CrystalGraph
from fastchgnet.data.sources import from_structures
from fastchgnet.errors import StructureError
from fastchgnet.units import KBAR_TO_GPA

_LABELS = ("energies", "forces", "stresses", "magmoms", "structure_ids")


class StructureData:
    """Structures and labels (reference units, see the module docstring), in memory.

    Per structure: energy eV/atom, forces (n, 3) eV/Å, stress (3, 3) VASP kBar (another
    shape, a Voigt (6,) one included, is a ValueError naming the structure), magmoms (n,) or
    chgnet's documented (n, 1) μB (flattened). NaN labels are missing as chgnet's Trainer
    masks them (``compat.labels``). Structures that training would skip (a non-finite energy,
    a label of the wrong shape, ...) are kept, warned of by index here and skipped, reported
    again, by ``Trainer.train``; ``problems`` maps their index to the reason.
    """

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
        if graph_converter is not None and not isinstance(graph_converter, CrystalGraphConverter):
            raise unsupported(
                f"graph_converter={type(graph_converter).__name__}",
                "pass model.graph_converter or a fastchgnet.compat CrystalGraphConverter",
            )
        self.graph_converter = graph_converter or CrystalGraphConverter()  # chgnet's 6 Å / 3 Å
        self.converter_given = graph_converter is not None  # Trainer checks its cutoffs
        self.structures, self.energies, self.forces = list(structures), energies, forces
        self.stresses = checked_stresses(stresses)
        self.magmoms, self.structure_ids = flat_magmoms(magmoms), structure_ids
        self.keys = np.arange(len(structures))
        if shuffle:
            random.shuffle(self.keys)
        self.problems = self._problems()
        warn_problems(self.problems, len(self.structures))

    def _problems(self) -> dict[int, str]:
        """StructureData index -> why training cannot use that structure (``check_frame``:
        labels' shapes and finiteness, elements, stress symmetry and magnitude); graph
        problems (isolated atoms) are found when ``Trainer.train`` builds the graphs."""
        problems = {}
        for key, frame in zip(range(len(self)), self._frames(range(len(self))), strict=True):
            try:
                check_frame(frame)
            except StructureError as error:
                problems[key] = error.problem
        return problems

    @classmethod
    def from_vasp(
        cls,
        file_root: str,
        *,
        check_electronic_convergence: bool = True,
        save_path: str | None = None,
        graph_converter: CrystalGraphConverter | None = None,
        shuffle: bool = True,
    ) -> StructureData:
        """The ionic steps of the VASP run in ``file_root`` (``parse_vasp_dir``: our VASP
        reader), ids 0, 1, ... as chgnet's."""
        from fastchgnet.compat.utils import parse_vasp_dir

        run = parse_vasp_dir(
            file_root,
            check_electronic_convergence=check_electronic_convergence,
            save_path=save_path,
        )
        return cls(
            run["structure"],
            run["energy_per_atom"],
            run["force"],
            stresses=run["stress"] or None,
            magmoms=run["magmom"] or None,
            structure_ids=np.arange(len(run["structure"])),
            graph_converter=graph_converter,
            shuffle=shuffle,
        )

    def __len__(self) -> int:
        return len(self.structures)

    def __getitem__(self, index: int) -> tuple[ReferenceGraph, dict[str, torch.Tensor]]:
        """(graph, targets) of the ``index``-th structure (shuffled order), as chgnet's:
        ``e`` () eV/atom, ``f`` (n, 3) eV/Å, ``s`` (3, 3) GPa (from kBar, x -0.1), ``m`` (n,)
        |μB|; float32. A structure that cannot be graphed raises (chgnet returns another)."""
        key = int(self.keys[index])
        ids = self.structure_ids
        mp_id = ids[key] if ids is not None else key
        graph = self.graph_converter(self.structures[key], graph_id=key, mp_id=mp_id)
        targets = {
            "e": torch.tensor(self.energies[key], dtype=torch.float32),
            "f": torch.tensor(np.asarray(self.forces[key]), dtype=torch.float32),
        }
        if self.stresses is not None:
            stress = np.asarray(self.stresses[key], dtype=np.float64) * KBAR_TO_GPA
            targets["s"] = torch.tensor(stress, dtype=torch.float32)
        if self.magmoms is not None and self.magmoms[key] is not None:
            targets["m"] = torch.tensor(np.abs(np.asarray(self.magmoms[key])), dtype=torch.float32)
        return graph, targets

    def frames(self, positions: Sequence[int]) -> Iterator[Frame]:
        """Frames (our units) of the dataset positions ``positions`` (shuffled order)."""
        return self._frames([int(self.keys[p]) for p in positions])

    def _frames(self, keys: Sequence[int]) -> Iterator[Frame]:
        """Frames (our units; missing labels None) of the structures ``keys`` (given order)."""
        stress = None
        if self.stresses is not None:
            stress = [present(self.stresses[k], f"stresses[{k}]") for k in keys]
            stress = [None if s is None else s * KBAR_TO_GPA for s in stress]
        magmoms = self.magmoms
        frames = from_structures(
            [self.structures[k] for k in keys],
            [self.energies[k] for k in keys],
            [present(self.forces[k], f"forces[{k}]") for k in keys],
            stress,
            None
            if magmoms is None
            else [present(magmoms[k], f"magmoms[{k}]", any_nan=True) for k in keys],
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


#: chgnet.data.dataset's names offered here (``CrystalGraph``: ours, see compat.graph)
__all__ = [
    "TORCH_DTYPE",
    "CrystalGraph",
    "CrystalGraphConverter",
    "StructureData",
    "get_loader",
    "get_train_val_test_loader",
]
