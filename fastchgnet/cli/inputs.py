"""What the commands read: structures from files, and a model by version or path."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from fastchgnet.model.reference import CHECKPOINTS


def read_structures(paths: list[str]) -> list[Any]:
    """Read every structure in CIF/POSCAR (pymatgen) or extxyz/other ASE files."""
    from pymatgen.core import Structure

    structures = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        try:
            with warnings.catch_warnings():  # pymatgen warns before failing; ASE is tried next
                warnings.simplefilter("ignore")
                structure = Structure.from_file(path)
            structure.properties["label"] = path.name
            structures.append(structure)
            continue
        except Exception:
            pass
        try:
            from ase.io import read

            frames = read(path, index=":")
        except Exception as exc:
            raise ValueError(f"{path}: cannot read a structure ({exc})") from exc
        if len(frames) == 0:
            raise ValueError(f"{path}: cannot read a structure (the file holds none)")
        for index, atoms in enumerate(frames):
            atoms.info.setdefault("name", f"{path.name}[{index}]")
            structures.append(atoms)
    return structures


def add_model_arguments(parser: Any) -> None:
    """``--model`` and ``--precision`` of the commands that run a model."""
    from fastchgnet.model.precision import PRECISIONS

    parser.add_argument("--model", default="0.3.0", help="reference version or model file")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="the energy model's arithmetic: bf16 runs its matrix products in bfloat16 "
        "(sums, geometry and outputs stay float32; CHGNet 0.3.0's energies move 4.6 meV/atom "
        "on average)",
    )


def load_model(spec: str, precision: str = "float32") -> Any:
    """A reference version ("0.3.0", "0.2.0", "r2scan") or a path to our model file, set to
    ``precision`` ("float32" or "bf16": ``FastCHGNet.set_precision``)."""
    from fastchgnet import FastCHGNet

    if spec in CHECKPOINTS:
        return FastCHGNet.from_reference(spec).set_precision(precision)
    if not Path(spec).is_file():
        raise FileNotFoundError(f"{spec}: no such model file (or one of {sorted(CHECKPOINTS)})")
    return FastCHGNet.load(spec).set_precision(precision)
