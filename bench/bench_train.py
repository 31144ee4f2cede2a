"""Training side by side: our conservative and direct modes vs the reference chgnet Trainer.

    python bench/bench_train.py [--n 800] [--epochs 4] [--batch-size 16] [--lr 1e-3]
                                [--seeds 0 1 2] [--architecture small|reference] [--whole-run]

Whole runs (issue #14): ``--whole-run --architecture reference --epochs 2`` (and 5) puts our
conversion of the labelled file and the reference's graph building on the clock, with
evaluation and checkpoints, and prints where our time goes outside the training steps. The
first run of the process (ours, conservative) also pays one-time imports and setup, a few
seconds, which the runs after it do not.

Same labelled data (the first ``n`` structures of the bundled quick-start set, labels from
CHGNet 0.3.0), the same train/val split (by material id, 80/20), the same architecture size
(``ARCHITECTURE``, built in both packages), the same targets and loss (Huber,
delta 0.1, prefactors e/f/s/m = 2, 1.5, 0.1, 0.1), Adam with cosine decay to 1 %, the same
batch size and number of epochs, composition energies fitted on the training set for both.
Reports validation MAE of every run (the same evaluation code for all three), wall time, and
training throughput in structures/s (time spent in per-epoch validation excluded; the
reference's graphs are built before its clock starts, as ours are in the cache) with the ratio
against the reference Trainer. One CPU thread per run. Numbers on a shared machine vary.
With several ``--seeds`` (weights and batch order; the split stays), every seed runs all three
and the table of means (and the spread across seeds) follows the per-seed tables: one seed's
MAE differences of a few per cent are within seed noise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fastchgnet.data.convert import convert
from fastchgnet.data.sources import read_frames
from fastchgnet.train.config import TrainConfig, apply_overrides
from fastchgnet.train.loading import gunzip_ase_file, make_splits, quickstart_path
from fastchgnet.train.run import train

#: The small architecture of the README's table (75k parameters), pinned here: the quick
#: start's defaults may change without changing this comparison. Conservative unless a run
#: asks for direct.
ARCHITECTURE = {
    "atom_fea_dim": 32,
    "bond_fea_dim": 32,
    "angle_fea_dim": 32,
    "atom_conv_hidden_dim": 32,
    "bond_conv_hidden_dim": 32,
    "mlp_hidden_dims": [32, 32],
    "num_radial": 15,
    "num_angular": 15,
    "n_conv": 3,
    "forces": "conservative",
    "coupled_updates": True,
}
#: The reference architecture (CHGNet 0.3.0's sizes, 412k parameters), for ``--architecture
#: reference``: the sizes the whole-run comparison of issue #14 asks for.
REFERENCE_ARCHITECTURE = {
    "atom_fea_dim": 64,
    "bond_fea_dim": 64,
    "angle_fea_dim": 64,
    "atom_conv_hidden_dim": 64,
    "bond_conv_hidden_dim": 64,
    "mlp_hidden_dims": [64, 64, 64],
    "num_radial": 31,
    "num_angular": 31,
    "n_conv": 4,
    "forces": "conservative",
    "coupled_updates": True,
}
LOSS = {"energy": 2.0, "forces": 1.5, "stress": 0.1, "magmoms": 0.1}


def val_mae(predict, frames: list) -> dict[str, float]:
    """MAE of a predictor over frames: e meV/atom, f meV/Å, s GPa, m μB (same code for all)."""
    predictions = predict([f.structure for f in frames])
    errors: dict[str, list[np.ndarray]] = {"e": [], "f": [], "s": [], "m": []}
    for frame, p in zip(frames, predictions, strict=True):
        errors["e"].append(np.atleast_1d(float(p["e"]) - frame.energy_per_atom))
        errors["f"].append((np.asarray(p["f"]) - frame.forces).ravel())
        errors["s"].append((np.asarray(p["s"]) - frame.stress).ravel())
        errors["m"].append(np.abs(np.asarray(p["m"]).ravel()) - frame.magmoms)
    scale = {"e": 1000.0, "f": 1000.0, "s": 1.0, "m": 1.0}
    return {k: float(np.abs(np.concatenate(v)).mean() * scale[k]) for k, v in errors.items()}


def run_ours(cache: Path, out: Path, args: argparse.Namespace, mode: str) -> dict:
    """Train our model in ``mode`` ("conservative" or "direct") with the run composition.
    With ``args.whole_run``, ``cache`` is the labelled extxyz file: its conversion to a fresh
    cache is on the clock too."""
    architecture = dict(args.architecture_sizes)
    start = time.perf_counter()
    convert_seconds = 0.0
    if args.whole_run:
        source, cache = cache, out / mode / "cache"
        shutil.rmtree(cache, ignore_errors=True)  # a fresh cache: the conversion is timed
        frames = [f for _, f in zip(range(args.n), read_frames(source), strict=False)]
        convert(iter(frames), cache, workers=1, progress=False)
        convert_seconds = time.perf_counter() - start
    if mode == "direct":
        architecture |= {"forces": "direct", "coupled_updates": False}
    config = apply_overrides(
        TrainConfig(),
        [
            f"data.source={cache}",
            "data.split=[0.8, 0.2, 0.0]",
            f"data.batch_size={args.batch_size}",
            f"model.architecture={json.dumps(architecture)}",
            f"optim.lr={args.lr}",
            f"optim.epochs={args.epochs}",
            f"run.out_dir={out / mode}",
            "run.checkpoint_every=0",
            "run.progress=lines",
            "run.log_every=1000000",
            "run.plots=false",
            f"run.seed={args.seed}",
            *(f"loss.{k}={v}" for k, v in LOSS.items()),
            # pinned: the reference Trainer's loss and schedule, whatever the defaults are
            "loss.kind=huber",
            "loss.huber_delta=0.1",
            "optim.scheduler=cosine",
            "optim.min_lr_ratio=0.01",
            "optim.warmup_steps=0",
            "optim.weight_decay=0.0",
            "optim.lr_scaling=none",
            "data.size_pool=0",
            *args.set,
        ],
    )
    summary = train(config)
    wall = time.perf_counter() - start
    from fastchgnet.model.chgnet import FastCHGNet

    model = FastCHGNet.load(out / mode / "model.pt")
    rate = summary.structures_per_second
    if args.whole_run:  # everything on the clock, as the user waits for it
        rate = summary.structures / wall
        print(
            f"  ours {mode}: {wall:.1f} s in all = convert {convert_seconds:.1f} s + training "
            f"steps {summary.train_seconds:.1f} s + the rest (setup, loading, evaluation, "
            f"checkpoints) {wall - convert_seconds - summary.train_seconds:.1f} s"
        )
    return {"model": model, "wall_s": wall, "structures_per_s": rate, "n_params": model.n_params}


def run_reference(train_frames: list, val_frames: list, out: Path, args: argparse.Namespace):
    """Train the reference CHGNet of the same size with ``chgnet.trainer.Trainer``."""
    from chgnet.data.dataset import StructureData, collate_graphs
    from chgnet.model import CHGNet
    from chgnet.model.composition_model import AtomRef
    from chgnet.trainer import Trainer
    from torch.utils.data import DataLoader

    def loader(frames: list, shuffle: bool) -> DataLoader:
        data = StructureData(
            structures=[f.structure for f in frames],
            energies=[f.energy_per_atom for f in frames],
            forces=[f.forces for f in frames],
            stresses=[f.stress / -0.1 for f in frames],  # it expects VASP kBar, converts back
            magmoms=[f.magmoms for f in frames],
            shuffle=False,
        )
        if not args.whole_run:  # build every graph before the clock starts
            for index in range(len(data)):
                data[index]
        return DataLoader(
            data, batch_size=args.batch_size, shuffle=shuffle, collate_fn=collate_graphs
        )

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    composition = AtomRef(is_intensive=True)
    composition.fit([f.structure for f in train_frames], [f.energy_per_atom for f in train_frames])
    a = args.architecture_sizes
    model = CHGNet(
        atom_fea_dim=a["atom_fea_dim"],
        bond_fea_dim=a["bond_fea_dim"],
        angle_fea_dim=a["angle_fea_dim"],
        num_radial=a["num_radial"],
        num_angular=a["num_angular"],
        n_conv=a["n_conv"],
        atom_conv_hidden_dim=a["atom_conv_hidden_dim"],
        bond_conv_hidden_dim=a["bond_conv_hidden_dim"],
        mlp_hidden_dims=a["mlp_hidden_dims"],
        composition_model=composition,
    )
    train_loader, val_loader = loader(train_frames, True), loader(val_frames, False)
    setup_seconds = time.perf_counter() - start
    trainer = Trainer(
        model=model,
        targets="efsm",
        energy_loss_ratio=LOSS["energy"],
        force_loss_ratio=LOSS["forces"],
        stress_loss_ratio=LOSS["stress"],
        mag_loss_ratio=LOSS["magmoms"],
        optimizer="Adam",
        scheduler="CosLR",
        criterion="Huber",
        epochs=args.epochs,
        learning_rate=args.lr,
        print_freq=10**9,
        torch_seed=args.seed,
        data_seed=args.seed,
        use_device="cpu",
    )
    validation = {"s": 0.0}
    validate = trainer._validate

    def timed_validate(*a, **k):
        start = time.perf_counter()
        try:
            return validate(*a, **k)
        finally:
            validation["s"] += time.perf_counter() - start

    trainer._validate = timed_validate
    start = time.perf_counter()
    trainer.train(train_loader, val_loader, save_dir=str(out / "reference"))
    wall = time.perf_counter() - start
    n_params = sum(p.numel() for p in trainer.model.parameters())
    rate = len(train_frames) * args.epochs / (wall - validation["s"])
    if args.whole_run:  # its graphs are built in its loader, every epoch, on the clock
        wall += setup_seconds
        rate = len(train_frames) * args.epochs / wall
        print(
            f"  reference Trainer: {wall:.1f} s in all, of which validation "
            f"{validation['s']:.1f} s and data setup {setup_seconds:.1f} s"
        )
    return {"model": trainer.model, "wall_s": wall, "structures_per_s": rate, "n_params": n_params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=800, help="structures (train + val)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="weights and batch order, one run each"
    )
    parser.add_argument("--out", default="/tmp/fastchgnet-bench-train")
    parser.add_argument(
        "--set", action="append", default=[], help="extra key=value for our runs' TrainConfig"
    )
    parser.add_argument(
        "--architecture",
        choices=["small", "reference"],
        default="small",
        help="model sizes on both sides: the README table's small one (75k parameters) or "
        "CHGNet 0.3.0's (412k)",
    )
    parser.add_argument(
        "--whole-run",
        action="store_true",
        help="time whole runs as a user waits for them: our conversion of the labelled file to "
        "a fresh cache and the reference's graph building (in its loader, every epoch) are on "
        "the clock, and so are evaluation and checkpoints; struct/s = trained structures / wall",
    )
    args = parser.parse_args()
    args.architecture_sizes = (
        REFERENCE_ARCHITECTURE if args.architecture == "reference" else ARCHITECTURE
    )
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plain = args.plain = gunzip_ase_file(quickstart_path(), out)
    frames = [f for _, f in zip(range(args.n), read_frames(plain), strict=False)]
    cache = out / "cache"
    if not (cache / "manifest.json").is_file():
        convert(iter(frames), cache, workers=1, progress=False)
    splits = make_splits(cache, apply_overrides(TrainConfig(), ["data.split=[0.8,0.2,0.0]"]).data)
    by_id = {f.frame_id: f for f in frames}
    pick = lambda idx: [by_id[splits.dataset[int(i)][1].frame_id] for i in idx]  # noqa: E731
    train_frames, val_frames = pick(splits.train), pick(splits.val)
    print(f"{len(train_frames)} train / {len(val_frames)} val structures, {args.epochs} epochs")

    per_seed = []
    for seed in args.seeds:
        args.seed = seed
        rows = run_all(cache, out / f"seed-{seed}", train_frames, val_frames, args)
        print_table(rows, f"seed {seed}")
        per_seed.append(rows)
    report = {
        f"seed {seed}": {
            name: {k: r[k] for k in ("n_params", "wall_s", "structures_per_s", "val")}
            for name, r in rows.items()
        }
        for seed, rows in zip(args.seeds, per_seed, strict=True)
    }
    if len(per_seed) > 1:
        means = {
            name: {
                "n_params": per_seed[0][name]["n_params"],
                "wall_s": float(np.mean([rows[name]["wall_s"] for rows in per_seed])),
                "structures_per_s": float(
                    np.mean([rows[name]["structures_per_s"] for rows in per_seed])
                ),
                "val": {
                    k: float(np.mean([rows[name]["val"][k] for rows in per_seed]))
                    for k in ("e", "f", "s", "m")
                },
                "spread": {
                    k: float(np.std([rows[name]["val"][k] for rows in per_seed]))
                    for k in ("e", "f", "s", "m")
                },
            }
            for name in per_seed[0]
        }
        print_table(means, f"mean of seeds {args.seeds}")
        print("  spread across seeds (population std): e / f / s / m")
        for name, r in means.items():
            sp = r["spread"]
            print(f"{name:>20}   {sp['e']:.1f} / {sp['f']:.1f} / {sp['s']:.3f} / {sp['m']:.3f}")
        report["mean"] = means
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    print(f"\nshared 2-core CPU, 1 thread per run; results in {out / 'results.json'}")


def run_all(
    cache: Path, out: Path, train_frames: list, val_frames: list, args: argparse.Namespace
) -> dict[str, dict]:
    """Our conservative and direct runs and the reference Trainer for ``args.seed``."""
    rows = {}
    for mode in ("conservative", "direct"):
        result = run_ours(args.plain if args.whole_run else cache, out, args, mode)
        result["val"] = val_mae(result["model"].predict_structure, val_frames)
        rows[f"ours {mode}"] = result
    reference = run_reference(train_frames, val_frames, out, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference["val"] = val_mae(
            lambda s: reference["model"].predict_structure(s, task="efsm", batch_size=16),
            val_frames,
        )
    rows["reference Trainer"] = reference
    return rows


def print_table(rows: dict[str, dict], title: str) -> None:
    """Validation MAE, wall time and throughput of each run, ratio to the reference."""
    ref_rate = rows["reference Trainer"]["structures_per_s"]
    print(
        f"\n{title:>20} {'params':>7} {'e meV/at':>9} {'f meV/Å':>8} {'s GPa':>6} {'m μB':>6} "
        f"{'wall s':>7} {'struct/s':>8} {'vs ref':>6}"
    )
    for name, r in rows.items():
        v = r["val"]
        ratio = r["structures_per_s"] / ref_rate
        print(
            f"{name:>20} {r['n_params']:>7} {v['e']:>9.1f} {v['f']:>8.1f} {v['s']:>6.3f} "
            f"{v['m']:>6.3f} {r['wall_s']:>7.1f} {r['structures_per_s']:>8.1f} {ratio:>5.2f}x"
        )


if __name__ == "__main__":
    main()
