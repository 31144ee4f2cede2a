"""EOS and elastic tensor through ``fastchgnet.workflows``: our batched model vs the reference
chgnet's calculator through the same workflow, same run, one thread.

    python bench/bench_workflows.py
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference"


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from chgnet.model import CHGNet, CHGNetCalculator

    from fastchgnet import FastCHGNet
    from fastchgnet.workflows.batch import batched_evaluator, calculator_evaluator
    from fastchgnet.workflows.elastic import elastic_tensor, equation_of_state, voigt_bulk_modulus

    silicon = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.47), ["Si"], [[0, 0, 0]])
    cases = {
        "Si (2 atoms)": silicon.get_primitive_structure(),
        "LiMnO2 (8 atoms)": Structure.from_file(REFERENCE / "mp-18767-LiMnO2.cif"),
    }
    ours = batched_evaluator(FastCHGNet.from_reference("0.3.0"))
    reference = CHGNetCalculator(CHGNet.load(verbose=False, use_device="cpu"), use_device="cpu")
    theirs = calculator_evaluator(reference)
    print(f"{'structure':18s} {'B_eos ref/ours GPa':>20s} {'B_voigt ref/ours':>18s} "
          f"{'max|dC| GPa':>11s} {'ref s':>7s} {'ours s':>7s} {'ratio':>6s}")  # fmt: skip
    for name, structure in cases.items():
        results = {}
        for side, evaluate in (("ref", theirs), ("ours", ours)):
            start = time.perf_counter()
            eos, tensor = (
                equation_of_state(structure, evaluate),
                elastic_tensor(structure, evaluate),
            )
            results[side] = (eos.bulk_modulus, tensor, time.perf_counter() - start)
        (b_ref, c_ref, t_ref), (b_ours, c_ours, t_ours) = results["ref"], results["ours"]
        print(
            f"{name:18s} {b_ref:9.2f}/{b_ours:<9.2f} "
            f"{voigt_bulk_modulus(c_ref):8.2f}/{voigt_bulk_modulus(c_ours):<8.2f} "
            f"{np.abs(c_ref - c_ours).max():11.4f} {t_ref:7.2f} {t_ours:7.2f} "
            f"{t_ref / t_ours:5.1f}x"
        )


if __name__ == "__main__":
    main()
