"""Effect of the training options at equal epochs on the bundled data (labels: CHGNet 0.3.0).

1. EMA and the best-on-validation model: the quick-start model trained from scratch on the
   first ``--n`` structures for ``--epochs`` epochs, without and with ``optim.ema_decay``;
   validation MAE of model.pt (last epoch; EMA weights when on) and of best_model.pt (the
   epoch best_model.txt names), both by the run's own validation code on its validation split.
2. Replay against forgetting: CHGNet 0.3.0 fine-tuned for ``--ft-epochs`` epochs on
   ``--ft-n`` structures whose energies are shifted by +0.2 eV/atom (a new functional), without
   and with ``data.replay_fraction`` of a base set (other bundled structures, labelled by 0.3.0
   itself); energy and force MAE on held-out base structures (forgetting) and on the shifted
   set's validation split (learning).

    python bench/bench_options.py [--n 640] [--epochs 8] [--ft-n 96] [--ft-epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from ase.io import read, write
from help_text import first_sentence

from fastchgnet.data.sources import gunzip_ase_file, read_ase
from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.train.cache_sources import resolve_cache
from fastchgnet.train.config import TrainConfig, apply_overrides
from fastchgnet.train.finetune import evaluate_indices
from fastchgnet.train.loading import make_splits, quickstart_path
from fastchgnet.train.run import train


def run(out: Path, overrides: list[str]) -> tuple[TrainConfig, dict[str, float]]:
    """Train with ``overrides`` of the quick-start config; the config and the final
    validation results."""
    base = [f"run.out_dir={out}", "run.progress=lines", "run.plots=false"]
    config = apply_overrides(TrainConfig(), base + overrides)
    return config, train(config).val


def saved_val_mae(config: TrainConfig, model_file: Path) -> tuple[float, float]:
    """Energy (meV/atom) and force (meV/Å) MAE of a saved model on the validation split of
    the run ``config`` made, by the run's own validation code (``train.loop.evaluate``)."""
    model = FastCHGNet.load(model_file)
    cutoffs = (model.config.atom_cutoff, model.config.bond_cutoff)
    cache = resolve_cache(config.data, Path(config.run.out_dir), cutoffs, is_main=True)
    splits = make_splits(cache, config.data)
    results = evaluate_indices(model, splits, splits.val, config)
    return results["energy_mae"], results["forces_mae"]


def frame_mae(model: FastCHGNet, frames: list) -> tuple[float, float]:
    """Energy (meV/atom) and force (meV/Å) MAE of ``model`` on labelled frames."""
    structures = [f.structure for f in frames]
    predictions = model.predict_structure(structures)
    e = np.mean([abs(p["e"] - f.energy_per_atom) for p, f in zip(predictions, frames, strict=True)])
    forces = np.concatenate(
        [np.abs(p["f"] - f.forces).ravel() for p, f in zip(predictions, frames, strict=True)]
    )
    return 1000 * float(e), 1000 * float(forces.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--n", type=int, default=640)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--ft-n", type=int, default=96)
    parser.add_argument("--ft-epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        print(
            f"1. from scratch, {args.n} structures, {args.epochs} epochs "
            "(val MAE e meV/atom, f meV/Å)"
        )
        common = [f"data.max_structures={args.n}", f"optim.epochs={args.epochs}",
                  f"data.cache_dir={root / 'cache'}"]  # fmt: skip
        for name, extra in (("plain", []), ("ema 0.99", ["optim.ema_decay=0.99"])):
            out = root / name.replace(" ", "-")
            config, _ = run(out, common + extra)
            last = saved_val_mae(config, out / "model.pt")
            best = saved_val_mae(config, out / "best_model.pt")
            epoch = (out / "best_model.txt").read_text().split(":")[0]
            print(f"  {name:10s} model.pt e {last[0]:.1f} f {last[1]:.1f}; best_model.pt "
                  f"({epoch}) e {best[0]:.1f} f {best[1]:.1f}", flush=True)  # fmt: skip

        plain = gunzip_ase_file(quickstart_path(), root)
        images = read(str(plain), index=":")
        new = images[: args.ft_n]
        for atoms in new:
            atoms.calc.results["energy"] += 0.2 * len(atoms)
            atoms.info["material_id"] = f"new-{atoms.info.get('material_id', '')}"
        write(str(root / "new.extxyz"), new)
        write(str(root / "base.extxyz"), images[1000:1400])
        write(str(root / "heldout.extxyz"), images[1600:1700])
        heldout = list(read_ase(root / "heldout.extxyz"))
        print(f"2. fine-tune 0.3.0 on {args.ft_n} shifted structures, {args.ft_epochs} epochs; "
              "held-out base MAE (forgetting) and shifted val MAE")  # fmt: skip
        reference = FastCHGNet.from_reference("0.3.0")
        e0, f0 = frame_mae(reference, heldout)
        print(f"  before fine-tuning: held-out base e {e0:.1f} f {f0:.1f}")
        tune = [f"data.source={root / 'new.extxyz'}", "model.init=reference:0.3.0",
                "model.architecture={}", f"optim.epochs={args.ft_epochs}", "optim.lr=3e-4",
                "data.split=[0.8,0.2,0.0]"]  # fmt: skip
        for fraction in (0.0, 0.25):
            out = root / f"ft-{fraction}"
            replay = [
                f"data.replay_source={root / 'base.extxyz'}",
                f"data.replay_fraction={fraction}",
            ]
            _, val = run(out, tune + (replay if fraction else []))
            e, f = frame_mae(FastCHGNet.load(out / "model.pt"), heldout)
            print(f"  replay {fraction:.2f}: held-out base e {e:.1f} f {f:.1f}; shifted val "
                  f"e {val['energy_mae']:.1f} f {val['forces_mae']:.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
