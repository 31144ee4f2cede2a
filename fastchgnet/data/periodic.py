"""Structures that are not periodic along every axis: a slab (pbc True, True, False), a molecule
in a box. The model repeats the cell along all three axes, as the reference does (its
``AseAtomsAdaptor`` makes every ASE Atoms a periodic Structure). Such a structure is taken
when it has a cell along its open axes and no bond reaches across them: its numbers are then
those of the open structure itself, the reference's too. Where a bond would cross, it is
refused in one line rather than computed as the periodic crystal it is not. The property
workflows (EOS, elastic, phonons) need a bulk crystal: ``check_periodic``.
"""

from __future__ import annotations

import numpy as np

from fastchgnet.errors import StructureError


def not_periodic(atoms: object, pbc: np.ndarray) -> str:
    """What to do with ASE Atoms whose ``pbc`` is not True on all three axes: set it where
    the cell is a box already (a slab's vacuum, a molecule's box), else add a box first."""
    cure = (
        "set atoms.pbc = True (its cell then repeats it: leave enough vacuum that images do "
        "not interact)"
        if boxed(atoms)
        else f"{BOX_IT.format(axis=_axis_argument(pbc))} and set atoms.pbc = True"
    )
    return f"needs periodic boundaries on all three axes (pbc={pbc.tolist()}); {cure}"


#: how to give a structure without a cell on its open axes one (``_axis_argument``'s text)
BOX_IT = (
    "put it in a box large enough that its images do not interact (atoms.center(vacuum=10{axis}))"
)


def boxed(atoms: object) -> bool:
    """Whether ASE ``atoms``' cell spans a volume (a slab's vacuum, a molecule's box)."""
    cell = np.asarray(atoms.cell.array, dtype=np.float64)  # type: ignore[attr-defined]
    return bool(np.isfinite(cell).all() and abs(np.linalg.det(cell)) > 1.0)


def _axis_argument(pbc: np.ndarray) -> str:
    """ASE ``center``'s ``axis`` argument for the open axes of ``pbc`` (none for all three)."""
    open_axes = [axis for axis in range(3) if not pbc[axis]]  # a slab keeps its periodic ones
    if len(open_axes) == 1:
        return f", axis={open_axes[0]}"
    return f", axis={tuple(open_axes)}" if len(open_axes) == 2 else ""


def open_axes(structure: object, name: str) -> np.ndarray:
    """(3,) bool | the axes along which ``structure`` is not periodic: ASE Atoms' ``pbc``
    False, or a pymatgen Structure's ``lattice.pbc``. The model repeats the cell along every
    axis, so an open axis needs a cell vector there (a box; else StructureError naming
    ``name``) and no bond across it (``check_open_axes``)."""
    pbc = _pbc(structure)
    if not pbc.all() and hasattr(structure, "cell") and not boxed(structure):
        raise StructureError(
            name,
            f"is not periodic (pbc={pbc.tolist()}) and has no cell along its open axes: "
            + BOX_IT.format(axis=_axis_argument(pbc)),
        )
    return ~pbc


def _pbc(structure: object) -> np.ndarray:
    """(3,) bool | ``structure``'s periodic axes (ASE's ``pbc``, pymatgen's ``pbc``; True
    where it has none)."""
    return np.resize(np.asarray(getattr(structure, "pbc", True), dtype=bool).reshape(-1), 3)


def check_open_axes(
    bond_atoms: np.ndarray, bond_images: np.ndarray, open_axes: np.ndarray, name: str
) -> None:
    """Raise StructureError naming ``name`` when a bond ((n_bonds, 2) atoms, (n_bonds, 3)
    images) reaches across an axis the structure is not periodic along: the model would
    repeat the cell there. A structure whose bonds all stay inside (a slab with more vacuum
    than the cutoff, a boxed molecule) gets the numbers of the open structure itself."""
    if not open_axes.any():
        return
    crossing = np.flatnonzero((bond_images[:, open_axes] != 0).any(axis=1))
    if crossing.size:
        i, j = bond_atoms[crossing[0]].tolist()
        axis = int(np.flatnonzero(open_axes & (bond_images[crossing[0]] != 0))[0])
        raise StructureError(
            name,
            f"atoms {i} and {j} are within the cutoff across axis {axis}, along which it is "
            f"not periodic (pbc={(~open_axes).tolist()}): the model would repeat the cell "
            "there; add vacuum along that axis (the gap must exceed the cutoff) or set "
            "pbc = True",
        )


def check_periodic(structure: object, name: str) -> None:
    """StructureError (one line, naming ``name``) unless ``structure`` (pymatgen Structure or
    ASE Atoms) is periodic on all three axes; for ASE Atoms it says what to set
    (``not_periodic``)."""
    pbc = _pbc(structure)
    if pbc.all():
        return
    if hasattr(structure, "cell"):  # ASE Atoms: what to set, or how to box it
        raise StructureError(name, not_periodic(structure, pbc))
    raise StructureError(name, f"needs periodic boundaries on all three axes (pbc={pbc.tolist()})")
