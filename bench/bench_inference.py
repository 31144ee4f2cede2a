"""Inference speed: FastCHGNet.predict_structure vs the reference chgnet, same run, same CPU.

Prints median wall time per call of predict_structure (energy, forces, stress, magmoms) for the
paper's two structures and a 64-atom supercell, and the ratio reference / ours.

    python bench/bench_inference.py [--repeats 30] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch
from help_text import first_sentence
from pymatgen.core import Structure

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference"


def median_time(fn, repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from chgnet.model import CHGNet

    from fastchgnet import FastCHGNet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    ours = FastCHGNet.from_reference("0.3.0")
    limno2 = Structure.from_file(REFERENCE / "mp-18767-LiMnO2.cif")
    cases = {
        "LiMnO2 (8 atoms)": limno2,
        "Li9Co7O16 (32 atoms)": Structure.from_file(REFERENCE / "mp-1175469-Li9Co7O16.cif"),
        "LiMnO2 2x2x2 (64 atoms)": limno2 * (2, 2, 2),
    }
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}")
    print(f"{'structure':26s} {'reference ms':>13s} {'ours ms':>9s} {'ratio':>7s}")
    for name, structure in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_ref = median_time(lambda s=structure: reference.predict_structure(s), args.repeats)
        t_ours = median_time(lambda s=structure: ours.predict_structure(s), args.repeats)
        print(f"{name:26s} {t_ref * 1e3:13.2f} {t_ours * 1e3:9.2f} {t_ref / t_ours:6.2f}x")


if __name__ == "__main__":
    main()
