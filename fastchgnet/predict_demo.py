"""Quick start: predict a crystal the package builds itself with the pretrained CHGNet 0.3.0.

    python -m fastchgnet.predict_demo

Builds layered rocksalt LiMnO2 (8 atoms), loads the reference weights shipped in the
``chgnet`` package, and prints energy (eV/atom), forces (eV/Å), stress (GPa) and magnetic
moments (μB), then a rattled 2x2x2 supercell and the time each prediction took.
"""

from __future__ import annotations

import time

import numpy as np
from pymatgen.core import Lattice, Structure

from fastchgnet import FastCHGNet


def layered_limno2() -> Structure:
    """Rocksalt LiMnO2 with Li and Mn in alternating (001) cation layers (8 atoms), Å."""
    cations = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    anions = [[0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]]
    species = ["Li", "Li", "Mn", "Mn", "O", "O", "O", "O"]
    return Structure(Lattice.tetragonal(4.15, 4.15), species, cations + anions)


def report(title: str, structure: Structure, prediction: dict, seconds: float) -> None:
    np.set_printoptions(precision=4, suppress=True)
    print(
        f"\n{title}: {structure.composition.reduced_formula}, {len(structure)} atoms "
        f"({seconds * 1e3:.1f} ms)"
    )
    print(f"  energy        {float(prediction['e']):.5f} eV/atom")
    print(f"  max |force|   {np.abs(prediction['f']).max():.4f} eV/Å")
    print(f"  stress (GPa)\n{prediction['s']}")
    print(f"  magmoms (μB)  {prediction['m'][: min(8, len(structure))]}")


def main() -> None:
    model = FastCHGNet.from_reference("0.3.0")
    print(f"FastCHGNet with the reference CHGNet 0.3.0 weights ({model.n_params:,} parameters)")
    structure = layered_limno2()
    start = time.perf_counter()
    prediction = model.predict_structure(structure)
    report("single structure", structure, prediction, time.perf_counter() - start)

    supercell = structure * (2, 2, 2)
    rng = np.random.default_rng(0)
    supercell = Structure(
        supercell.lattice,
        supercell.species,
        supercell.cart_coords + rng.normal(0, 0.02, (len(supercell), 3)),
        coords_are_cartesian=True,
    )
    start = time.perf_counter()
    predictions = model.predict_structure([structure, supercell])
    report(
        "batched with a rattled 2x2x2 supercell",
        supercell,
        predictions[1],
        time.perf_counter() - start,
    )


if __name__ == "__main__":
    main()
