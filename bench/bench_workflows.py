"""EOS, elastic tensor and phonons through matcalc (``fastchgnet.workflows``: EOSCalc,
ElasticityCalc, PhononCalc; ours with cells prefetched in batches): our calculator vs the
reference chgnet's ``CHGNetCalculator`` through the same matcalc workflow, same run, one thread.

    python bench/bench_workflows.py [--no-warm-up]

Before any clock starts, each side runs every workflow once on Si, untimed: the first call
imports matcalc, phonopy and pymatgen's EOS and elasticity modules (imported inside the
workflow functions), which would otherwise land in the first timed case. ``HF_HUB_OFFLINE=1``
is set: importing matcalc lists models on Hugging Face, and retries for about 30 s offline.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from help_text import first_sentence
from pymatgen.core import Lattice, Structure

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference"


def warm_up(structure: Structure, calculators) -> None:
    """One untimed run of each workflow per calculator: lazy imports and first-call costs."""
    from fastchgnet.workflows.elastic import elastic_tensor, equation_of_state
    from fastchgnet.workflows.phonons import phonopy_run

    for calculator in calculators:
        equation_of_state(structure, calculator)
        elastic_tensor(structure, calculator)
        phonopy_run(structure, calculator, (2, 2, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="skip the untimed first run per side (the first timed case then includes imports)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from chgnet.model import CHGNet, CHGNetCalculator

    from fastchgnet import FastCHGNet
    from fastchgnet.workflows.batch import as_calculator
    from fastchgnet.workflows.elastic import elastic_tensor, equation_of_state
    from fastchgnet.workflows.phonons import gamma_frequencies, phonopy_run

    silicon = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.47), ["Si"], [[0, 0, 0]])
    cases = {
        "Si (2 atoms)": silicon.get_primitive_structure(),
        "LiMnO2 (8 atoms)": Structure.from_file(REFERENCE / "mp-18767-LiMnO2.cif"),
    }
    ours = as_calculator(FastCHGNet.from_reference("0.3.0"))
    reference = CHGNetCalculator(
        CHGNet.load(model_name="0.3.0", verbose=False, use_device="cpu"), use_device="cpu"
    )
    if not args.no_warm_up:
        warm_up(cases["Si (2 atoms)"], (reference, ours))
    header = ("structure", "B_eos ref/ours GPa", "B_vrh ref/ours", "max|dC| GPa", "max|C|")
    print(f"{header[0]:18s} {header[1]:>20s} {header[2]:>18s} {header[3]:>11s} {header[4]:>7s}"
          f" {'ref s':>7s} {'ours s':>7s} {'ratio':>6s}")  # fmt: skip
    for name, structure in cases.items():
        runs = {}
        for side, calculator in (("ref", reference), ("ours", ours)):
            start = time.perf_counter()
            eos = equation_of_state(structure, calculator)["bulk_modulus_bm"]
            elastic = elastic_tensor(structure, calculator)
            runs[side] = (eos, elastic, time.perf_counter() - start)
        (b_ref, e_ref, t_ref), (b_ours, e_ours, t_ours) = runs["ref"], runs["ours"]
        c_ref, c_ours = e_ref["elastic_tensor"].voigt, e_ours["elastic_tensor"].voigt
        print(
            f"{name:18s} {b_ref:9.2f}/{b_ours:<9.2f} "
            f"{e_ref['bulk_modulus_vrh']:8.2f}/{e_ours['bulk_modulus_vrh']:<8.2f} "
            f"{np.abs(c_ref - c_ours).max():11.4f} {np.abs(c_ref).max():7.1f} "
            f"{t_ref:7.2f} {t_ours:7.2f} {t_ref / t_ours:5.1f}x"
        )
    print(f"\n{'phonons (2x2x2)':18s} {'cells':>5s} {'max|dnu(G)| THz':>16s} {'ref s':>7s} "
          f"{'ours s':>7s} {'ratio':>6s}")  # fmt: skip
    for name, structure in cases.items():
        runs = {}
        for side, calculator in (("ref", reference), ("ours", ours)):
            start = time.perf_counter()
            phonon = phonopy_run(structure, calculator, (2, 2, 2))
            runs[side] = (phonon, time.perf_counter() - start)
        (p_ref, t_ref), (p_ours, t_ours) = runs["ref"], runs["ours"]
        difference = np.abs(gamma_frequencies(p_ref) - gamma_frequencies(p_ours)).max()
        cells = len(p_ours.supercells_with_displacements)
        print(f"{name:18s} {cells:5d} {difference:16.4f} {t_ref:7.2f} {t_ours:7.2f} "
              f"{t_ref / t_ours:5.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
