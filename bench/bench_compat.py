"""The reference README's usage blocks, run with ``chgnet`` and with ``fastchgnet.compat`` (the
import line swapped), same process, same thread count, denormals flushed on both sides.

Prints one row per block: reference seconds, compat seconds and the ratio reference / compat.

    python bench/bench_compat.py [--threads 1] [--repeats 5] [--md-steps 50] [--epochs 2]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from bench_inference import median_time
from help_text import first_sentence
from pymatgen.core import Structure

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference"


def blocks(api, limno2: Structure, big: Structure, args, labelled: dict) -> dict:
    """The usage blocks for one package's names (``api``: a namespace of its classes)."""
    model = api.CHGNet.load(use_device="cpu", verbose=False)
    rattled = limno2.copy()
    rattled.perturb(0.05, min_distance=0.0)
    rattled.apply_strain(0.02)
    feats = {"return_site_energies": True, "return_atom_feas": True, "return_crystal_feas": True}

    def md() -> None:
        from ase.md.velocitydistribution import thermalize_momenta
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = AseAtomsAdaptor.get_atoms(limno2)
        thermalize_momenta(atoms, temperature_K=1000, rng=np.random.default_rng(0))
        dyn = api.MolecularDynamics(
            atoms=atoms, model=model, ensemble="nvt", temperature=1000, timestep=2,
            loginterval=100, use_device="cpu",
        )  # fmt: skip
        dyn.run(args.md_steps)

    def finetune() -> None:
        random.seed(0)
        tuned = api.CHGNet.load(use_device="cpu", verbose=False)
        dataset = api.StructureData(**labelled)
        loaders = api.get_train_val_test_loader(
            dataset, batch_size=8, train_ratio=0.8, val_ratio=0.1
        )
        trainer = api.Trainer(
            model=tuned, targets="efsm", learning_rate=1e-3, epochs=args.epochs, use_device="cpu"
        )
        with tempfile.TemporaryDirectory() as out:
            trainer.train(*loaders, save_dir=out)

    return {
        "predict_structure LiMnO2 (efsm)": (lambda: model.predict_structure(limno2), True),
        "predict_structure Li9Co7O16 (+site energies, features)": (
            lambda: model.predict_structure(big, **feats),
            True,
        ),
        f"predict_structure {len(labelled['structures'])} crystals, task='e' (screening)": (
            lambda: model.predict_structure(labelled["structures"], task="e", batch_size=16),
            True,
        ),
        f"predict_structure {len(labelled['structures'])} crystals, task='efsm'": (
            lambda: model.predict_structure(labelled["structures"], batch_size=16),
            True,
        ),
        "StructOptimizer.relax rattled LiMnO2": (
            lambda: api.StructOptimizer(model).relax(rattled, verbose=False),
            False,
        ),
        f"MolecularDynamics nvt {args.md_steps} steps LiMnO2": (md, False),
        f"Trainer.train efsm, {len(labelled['structures'])} crystals, {args.epochs} epochs": (
            finetune,
            False,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--md-steps", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # both sides, so the ratio is the code's alone
    warnings.simplefilter("ignore")

    import chgnet.data.dataset
    import chgnet.model
    import chgnet.trainer

    import fastchgnet.compat
    from fastchgnet.data.random_crystals import varied_structures

    class Reference:
        CHGNet = chgnet.model.CHGNet
        StructOptimizer = chgnet.model.StructOptimizer
        MolecularDynamics = chgnet.model.MolecularDynamics
        StructureData = chgnet.data.dataset.StructureData
        get_train_val_test_loader = staticmethod(chgnet.data.dataset.get_train_val_test_loader)
        Trainer = chgnet.trainer.Trainer

    limno2 = Structure.from_file(REFERENCE / "mp-18767-LiMnO2.cif")
    big = Structure.from_file(REFERENCE / "mp-1175469-Li9Co7O16.cif")
    labeller = fastchgnet.compat.CHGNet.load(use_device="cpu", verbose=False)
    structures = varied_structures(40, seed=3, max_atoms=12)
    labels = labeller.predict_structure(structures)
    labelled = {
        "structures": structures,
        "energies": [float(p["e"]) + 0.03 for p in labels],
        "forces": [p["f"] for p in labels],
        "stresses": [p["s"] / -0.1 for p in labels],
        "magmoms": [p["m"] for p in labels],
    }
    theirs = blocks(Reference, limno2, big, args, labelled)
    ours = blocks(fastchgnet.compat, limno2, big, args, labelled)
    print(f"torch {torch.__version__}, {args.threads} thread(s), flush_denormal on both sides")
    print(f"{'usage block':62s} {'reference s':>12s} {'compat s':>9s} {'ratio':>7s}")
    for name, (reference_fn, repeat) in theirs.items():
        compat_fn = ours[name][0]
        repeats = args.repeats if repeat else 0
        ref_s = median_time(reference_fn, repeats, warmup=1) if repeat else _once(reference_fn)
        our_s = median_time(compat_fn, repeats, warmup=1) if repeat else _once(compat_fn)
        print(f"{name:62s} {ref_s:12.3f} {our_s:9.3f} {ref_s / our_s:6.1f}x", flush=True)


def _once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
