"""Graph building speed: fastchgnet.build_graph vs the reference CrystalGraphConverter.

Same structures, same run, same CPU: a varied set (prototypes across the periodic table,
1 to 100+ atoms, strained and rattled) plus the paper's two structures. Prints the mean time
per structure of each and the ratio.

    python bench/bench_graph.py [--n 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

from help_text import first_sentence
from pymatgen.core import Structure

from fastchgnet import build_graph
from fastchgnet.data.random_crystals import varied_structures

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference"


def mean_time_per_structure(fn, structures, repeats: int) -> float:
    """Best-of-``repeats`` mean wall time of ``fn(s)`` over ``structures``, seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for structure in structures:
            fn(structure)
        best = min(best, (time.perf_counter() - start) / len(structures))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--n", type=int, default=200, help="varied structures")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from chgnet.graph import CrystalGraphConverter

    structures = varied_structures(args.n, seed=0, max_atoms=140)
    if REFERENCE.is_dir():
        structures += [Structure.from_file(p) for p in sorted(REFERENCE.glob("*.cif"))]
    converter = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3, algorithm="fast")
    atoms = sorted(len(s) for s in structures)
    median = atoms[len(atoms) // 2]
    print(f"{len(structures)} structures, {atoms[0]}-{atoms[-1]} atoms (median {median})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_ref = mean_time_per_structure(converter, structures, args.repeats)
    print(f"reference CrystalGraphConverter (fast): {t_ref * 1e3:7.3f} ms/structure")
    for backend in ("pymatgen", "vesin"):
        t_ours = mean_time_per_structure(
            lambda s, b=backend: build_graph(s, backend=b), structures, args.repeats
        )
        print(
            f"fastchgnet build_graph ({backend:8s}):    {t_ours * 1e3:7.3f} ms/structure"
            f"   {t_ref / t_ours:5.1f}x faster"
        )


if __name__ == "__main__":
    main()
