"""In-memory pymatgen Structures or ASE Atoms with label lists, in our units."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from pymatgen.core import Structure

from fastchgnet.data.frame import (
    MATERIAL_ID_KEYS,
    Frame,
    implausible_labels,
    periodic_structure,
    unreadable_frame,
)
from fastchgnet.data.graph import check_ordered
from fastchgnet.data.sources.labels import label_array
from fastchgnet.errors import StructureError


def from_structures(
    structures: Sequence[Structure | Any],
    energies: Sequence[float | None] | None = None,
    forces: Sequence[object] | None = None,
    stresses: Sequence[object] | None = None,
    magmoms: Sequence[object] | None = None,
) -> Iterator[Frame]:
    """Frames from in-memory pymatgen Structures or ASE Atoms and labels already in our units.

    A structure that cannot be trained on is a frame with a ``problem`` (conversion skips and
    lists it): a disordered Structure (``graph.check_ordered``), Atoms without a periodic cell
    (``frame.periodic_structure``), implausible labels (``implausible_labels``).

    Args:
        structures: the structures; ``properties["material_id"]`` (Structure) or
            ``info["material_id"]`` / ``info["mp_id"]`` (Atoms) is used where present, else
            ``structure-<i>``.
        energies: eV/atom per structure (``None`` entries are unlabelled).
        forces: (n_atoms, 3) eV/Å per structure.
        stresses: (3, 3) GPa, CHGNet sign, per structure.
        magmoms: (n_atoms,) μB per structure (made absolute).

    Raises:
        ValueError: a label list of another length, or an entry that is neither a Structure
            nor Atoms (naming its position and type).
    """
    n = len(structures)
    for label, values in (
        ("energies", energies),
        ("forces", forces),
        ("stresses", stresses),
        ("magmoms", magmoms),
    ):
        if values is not None and len(values) != n:
            raise ValueError(f"{label} has {len(values)} entries for {n} structures")
    for i, item in enumerate(structures):
        structure, material_id, problem = _structure(item, i)
        if structure is None:
            yield unreadable_frame(material_id, str(i), problem)
            continue
        magmom = None if magmoms is None else label_array(magmoms[i])
        energy = None if energies is None else energies[i]
        frame = Frame(
            structure=structure,
            energy_per_atom=None if energy is None else float(energy),
            forces=None if forces is None else label_array(forces[i]),
            stress=None if stresses is None else label_array(stresses[i]),
            magmoms=None if magmom is None else np.abs(magmom),
            material_id=material_id,
            frame_id=str(i),
        )
        frame.problem = problem or implausible_labels(frame)
        yield frame


def _structure(item: Any, i: int) -> tuple[Structure | None, str, str | None]:
    """(Structure or None, material id, problem or None) of entry ``i``."""
    if isinstance(item, Structure):
        material_id = str(item.properties.get("material_id", f"structure-{i}"))
        try:
            check_ordered(item, material_id)
        except StructureError as error:
            return None, material_id, f"{item.composition.formula} {error.problem}"
        return item, material_id, None
    if hasattr(item, "get_scaled_positions"):  # ASE Atoms
        ids = [item.info[key] for key in MATERIAL_ID_KEYS if item.info.get(key) is not None]
        structure, problem = periodic_structure(item)
        return structure, str(ids[0]) if ids else f"structure-{i}", problem
    raise ValueError(
        f"structures[{i}]: expected a pymatgen Structure or ASE Atoms, got {type(item).__name__}"
    )
