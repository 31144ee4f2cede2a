"""Convert an MPtrj-format JSON of >= 200 MB to a graph cache; print peak RSS and structures/s.

The JSON is generated streaming into /tmp (never the repository): perturbed rock-salt cells of
8, 16 and 64 atoms, 40 frames per material, random labels. Memory bound of ``convert``: the main
process holds one material's frames plus a window of ``workers * 64`` frames; each worker holds
16 frames and their graphs; shard arrays go to disk as they are made. So peak RSS stays flat
as the file grows (compare --megabytes 50 and 200).

    python bench/bench_convert.py [--megabytes 200] [--workers 2] [--dir /tmp] [--keep]

The JSON and the cache go into a new folder ``bench-convert-*`` made inside ``--dir``; only that
folder is removed at the end (kept with ``--keep``), nothing else in ``--dir`` is touched.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from help_text import first_sentence
from pymatgen.core import Lattice, Structure

from fastchgnet.data.cache import GraphDataset
from fastchgnet.data.convert import convert
from fastchgnet.data.sources import read_mptrj

CATION = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
ANION = [[0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]


def base_cells() -> list[Structure]:
    cell = Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4, CATION + ANION)
    return [cell, cell * (2, 1, 1), cell * (2, 2, 2)]


def symmetric(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` (3, 3) made symmetric, as a stress label must be (ingest refuses others)."""
    return (matrix + matrix.T) / 2


def write_mptrj(path: Path, megabytes: float, frames_per_material: int = 40) -> int:
    """Stream an MPtrj-format JSON of about ``megabytes`` to ``path``; return frames written."""
    rng = np.random.default_rng(0)
    cells = base_cells()
    written, n_frames, material = 0, 0, 0
    with open(path, "w") as handle:
        handle.write("{")
        while written < megabytes * 1e6:
            cell = cells[material % len(cells)]
            n = len(cell)
            frames = {}
            for k in range(frames_per_material):
                cart = cell.cart_coords + rng.normal(scale=0.05, size=(n, 3))
                structure = Structure(cell.lattice, cell.species, cart, coords_are_cartesian=True)
                total = float(rng.uniform(-5, -3) * n)
                frames[f"mp-{material}-{k}"] = {
                    "structure": structure.as_dict(),
                    "uncorrected_total_energy": total,
                    "corrected_total_energy": total - 0.5,
                    "energy_per_atom": total / n,
                    "ef_per_atom": 0.0,
                    "e_per_atom_relaxed": total / n,
                    "force": rng.normal(size=(n, 3)).tolist(),
                    "stress": symmetric(rng.normal(scale=5, size=(3, 3))).tolist(),
                    "magmom": np.abs(rng.normal(size=n)).tolist(),
                    "mp_id": f"mp-{material}",
                }
            text = json.dumps({f"mp-{material}": frames})[1:-1]
            handle.write(("," if material else "") + text)
            written += len(text)
            n_frames += frames_per_material
            material += 1
        handle.write("}")
    return n_frames


def peak_rss_mb() -> tuple[float, float]:
    """Peak resident set size (MB) of this process and of its largest finished child."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, child


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--megabytes", type=float, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument(
        "--dir",
        default=tempfile.gettempdir(),
        help="where to work: a new folder bench-convert-* is made inside it for the JSON and "
        "the cache, and only that folder is removed at the end (default: the temporary folder)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the JSON and cache")
    args = parser.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.dir))
    source = work / "mptrj.json"
    start = time.perf_counter()
    n_frames = write_mptrj(source, args.megabytes)
    size_mb = source.stat().st_size / 1e6
    print(
        f"wrote {source} ({size_mb:.0f} MB, {n_frames} frames) in "
        f"{time.perf_counter() - start:.0f} s; RSS so far {peak_rss_mb()[0]:.0f} MB"
    )
    summary = convert(
        read_mptrj(source), work / "cache", workers=args.workers, shard_size=args.shard_size
    )
    own, child = peak_rss_mb()
    dataset = GraphDataset(work / "cache")
    if len(dataset) != n_frames:  # a rate over skipped frames would time nothing
        sys.exit(f"the cache holds {len(dataset)} of {n_frames} frames: see its skipped.json")
    cache_mb = sum(p.stat().st_size for p in (work / "cache").rglob("*") if p.is_file()) / 1e6
    print(
        f"converted {summary.n_structures} structures in {summary.seconds:.1f} s: "
        f"{summary.structures_per_second:.0f} structures/s with {args.workers} workers "
        f"({sys.platform}); cache {cache_mb:.0f} MB, {len(dataset)} structures"
    )
    workers = f"largest worker {child:.0f} MB" if args.workers > 1 else "no worker processes"
    print(f"peak RSS: main {own:.0f} MB, {workers} (source {size_mb:.0f} MB)")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
