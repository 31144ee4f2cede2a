"""In-memory pymatgen Structures (or ASE Atoms) with label lists, in our units."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from pymatgen.core import Structure

from fastchgnet.data.frame import Frame, implausible_labels
from fastchgnet.data.sources.labels import label_array


def from_structures(
    structures: Sequence[Structure],
    energies: Sequence[float | None] | None = None,
    forces: Sequence[object] | None = None,
    stresses: Sequence[object] | None = None,
    magmoms: Sequence[object] | None = None,
) -> Iterator[Frame]:
    """Frames from in-memory pymatgen Structures and labels already in our units (a frame
    with implausible labels gets a ``problem``: ``implausible_labels``).

    Args:
        structures: the structures; ``properties["material_id"]`` is used where present.
        energies: eV/atom per structure (``None`` entries are unlabelled).
        forces: (n_atoms, 3) eV/Å per structure.
        stresses: (3, 3) GPa, CHGNet sign, per structure.
        magmoms: (n_atoms,) μB per structure (made absolute).
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
    for i, structure in enumerate(structures):
        magmom = None if magmoms is None else label_array(magmoms[i])
        energy = None if energies is None else energies[i]
        frame = Frame(
            structure=structure,
            energy_per_atom=None if energy is None else float(energy),
            forces=None if forces is None else label_array(forces[i]),
            stress=None if stresses is None else label_array(stresses[i]),
            magmoms=None if magmom is None else np.abs(magmom),
            material_id=str(structure.properties.get("material_id", f"structure-{i}")),
            frame_id=str(i),
        )
        frame.problem = implausible_labels(frame)
        yield frame
