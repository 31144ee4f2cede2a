"""Training side by side: our conservative and direct modes vs the reference chgnet Trainer.

    python bench/bench_train.py [--n 800] [--epochs 4] [--batch-size 16] [--lr 1e-3]
                                [--seeds 0 1 2] [--architecture small|reference] [--whole-run]
                                [--source FILE] [--split 0.8 0.1 0.1] [--loss 1 1 0.1 0.1]
                                [--no-reference] [--equal-wall-time] [--threads 1]
                                [--reference-flush-denormals]

Direct against conservative (issue #17): ``--source synth1000.extxyz.gz``, a labelled set made
by ``fastchgnet data synth -n 1000 --seed 11 --max-atoms 100 -o synth1000.extxyz.gz`` (crystals
up to 100 atoms, CHGNet 0.3.0 labels),
``--split 0.8 0.1 0.1`` (the table then reports the held-out test split), ``--loss 1 1 0.1 0.1``,
``--epochs 7 --architecture reference --seeds 0 1 2``. ``--equal-wall-time`` adds a
conservative run given the seconds the direct run trained for: the whole epochs of its own
7-epoch run's pace that fit in them (at least one), its cosine schedule over those epochs.

Whole runs (issue #14): ``--whole-run --architecture reference --epochs 2`` (and 5) puts our
conversion of the labelled file and the reference's graph building on the clock, with
evaluation and checkpoints, and prints where our time goes outside the training steps. The
modules both sides' runs import on first use (``torch._dynamo``, which ``torch.optim``'s Adam
pulls in, 1.4 s; ASE's file readers) are loaded before any clock starts, so the first run of
the process does not pay them alone. The fair race (issue #14) adds
``--reference-flush-denormals``: the reference Trainer runs with denormal floats flushed, as
ours always does (one line a chgnet user can add).

Same labelled data (the first ``n`` structures of the bundled quick-start set, labels from
CHGNet 0.3.0), the same train/val split (by material id, 80/20), the same architecture size
(``ARCHITECTURE``, built in both packages), the same targets and loss (Huber,
delta 0.1, prefactors e/f/s/m = 2, 1.5, 0.1, 0.1), Adam with cosine decay to 1 %, the same
batch size and number of epochs, composition energies fitted on the training set for both.
Reports validation MAE of every run (the same evaluation code for all three), wall time, and
training throughput in structures/s (time spent in per-epoch validation excluded; the
reference's graphs are built before its clock starts, as ours are in the cache) with the ratio
against the reference Trainer. ``--threads`` CPU threads per run (default one; at more, our first
run starts the OpenMP team with denormals flushed, and the reference's worker threads keep that
for the rest of the process, so only ``--reference-flush-denormals`` gives it equal terms).
Numbers on a shared machine vary.
With several ``--seeds`` (weights and batch order; the split stays), every seed runs all three
and the table of means (and the spread across seeds) follows the per-seed tables: one seed's
MAE differences of a few per cent are within seed noise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from help_text import first_sentence

from fastchgnet.data.convert import convert
from fastchgnet.data.sources import gunzip_ase_file, read_frames
from fastchgnet.files import atomic_write_bytes
from fastchgnet.numerics import flush_denormals
from fastchgnet.train.config import TrainConfig, apply_overrides
from fastchgnet.train.loading import make_splits, quickstart_path
from fastchgnet.train.run import train

#: The small architecture of docs/performance.md's table (75k parameters), pinned here: the quick
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
#: Loss prefactors of docs/performance.md's small-architecture table; ``--loss`` replaces them.
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


def run_ours(
    cache: Path, out: Path, args: argparse.Namespace, mode: str, epochs: int | None = None
) -> dict:
    """Train our model in ``mode`` ("conservative" or "direct") with the run composition, for
    ``epochs`` (default ``args.epochs``). With ``args.whole_run``, ``cache`` is the labelled
    extxyz file: its conversion to a fresh cache is on the clock too."""
    epochs = args.epochs if epochs is None else epochs
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
        architecture |= {"forces": "direct", "coupled_updates": False} | args.direct_arch
    config = apply_overrides(
        TrainConfig(),
        [
            f"data.source={cache}",
            f"data.split={json.dumps(args.split)}",
            f"data.batch_size={args.batch_size}",
            f"model.architecture={json.dumps(architecture)}",
            f"optim.lr={args.lr}",
            f"optim.epochs={epochs}",
            f"run.out_dir={out / mode}",
            "run.checkpoint_every=0",
            "run.progress=lines",
            "run.log_every=1000000",
            "run.plots=false",
            f"run.seed={args.seed}",
            *(f"loss.{k}={v}" for k, v in args.loss.items()),
            # pinned: the reference Trainer's loss and schedule, whatever the defaults are
            "loss.kind=huber",
            "loss.huber_delta=0.1",
            "optim.scheduler=cosine",
            "optim.min_lr_ratio=0.01",
            "optim.warmup_steps=0",
            "optim.weight_decay=0.0",
            "optim.lr_scaling=none",
            "data.size_pool=0",
            f"run.threads={args.threads}",
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
    return {
        "model": model,
        "wall_s": wall,
        "train_s": summary.train_seconds,
        "epochs": epochs,
        "structures_per_s": rate,
        "n_params": model.n_params,
    }


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
        energy_loss_ratio=args.loss["energy"],
        force_loss_ratio=args.loss["forces"],
        stress_loss_ratio=args.loss["stress"],
        mag_loss_ratio=args.loss["magmoms"],
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
    with flush_denormals() if args.reference_flush_denormals else contextlib.nullcontext():
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


def warm_imports() -> None:
    """Load the modules every run imports on first use, before any clock starts: whichever
    run came first paid for them alone (1.4 s of ``torch._dynamo`` through ``torch.optim``'s
    Adam on this machine)."""
    import ase.io  # noqa: F401
    import torch._dynamo  # noqa: F401

    with contextlib.suppress(ImportError):  # the reference, when installed
        from chgnet.trainer import Trainer  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--n", type=int, default=800, help="structures (train + val + test)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="weights and batch order, one run each"
    )
    parser.add_argument("--out", default="/tmp/fastchgnet-bench-train")
    parser.add_argument(
        "--source",
        default="",
        help="labelled extxyz[.gz] (energy, forces, stress, magmoms); default: the bundled "
        "quick-start set",
    )
    parser.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=[0.8, 0.2, 0.0],
        metavar=("TRAIN", "VAL", "TEST"),
        help="fractions by material; with a test fraction the table reports the test split",
    )
    parser.add_argument(
        "--loss",
        type=float,
        nargs=4,
        default=list(LOSS.values()),
        metavar=("E", "F", "S", "M"),
        help="Huber (delta 0.1) prefactors of energy, forces, stress, magmoms, both sides",
    )
    parser.add_argument(
        "--set", action="append", default=[], help="extra key=value for our runs' TrainConfig"
    )
    parser.add_argument(
        "--direct-arch",
        default="{}",
        help="JSON of model settings added to the direct run's architecture only",
    )
    parser.add_argument(
        "--architecture",
        choices=["small", "reference"],
        default="small",
        help="model sizes on both sides: docs/performance.md's small one (75k parameters) or "
        "CHGNet 0.3.0's (412k)",
    )
    parser.add_argument(
        "--whole-run",
        action="store_true",
        help="time whole runs as a user waits for them: our conversion of the labelled file to "
        "a fresh cache and the reference's graph building (in its loader, every epoch) are on "
        "the clock, and so are evaluation and checkpoints; struct/s = trained structures / wall",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["conservative", "direct"],
        default=["conservative", "direct"],
        help="our runs",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="ours only (no reference Trainer run)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of every run (both sides)"
    )
    parser.add_argument(
        "--reference-flush-denormals",
        action="store_true",
        help="the reference Trainer flushes denormal floats too (ours always does)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="seeds run in parallel processes (one thread each)"
    )
    parser.add_argument(
        "--equal-wall-time",
        action="store_true",
        help="add a conservative run given the training seconds of the direct run",
    )
    args = parser.parse_args()
    warm_imports()
    args.architecture_sizes = (
        REFERENCE_ARCHITECTURE if args.architecture == "reference" else ARCHITECTURE
    )
    args.loss = dict(zip(LOSS, args.loss, strict=True))
    args.direct_arch = json.loads(args.direct_arch)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = Path(args.source) if args.source else quickstart_path()
    plain = args.plain = gunzip_ase_file(source, out)
    frames = [f for _, f in zip(range(args.n), read_frames(plain), strict=False)]
    cache = out / "cache"
    if not (cache / "manifest.json").is_file():
        convert(iter(frames), cache, workers=1, progress=False)
    split_config = apply_overrides(TrainConfig(), [f"data.split={json.dumps(args.split)}"])
    splits = make_splits(cache, split_config.data)
    by_id = {f.frame_id: f for f in frames}
    pick = lambda idx: [by_id[splits.dataset[int(i)][1].frame_id] for i in idx]  # noqa: E731
    train_frames, val_frames = pick(splits.train), pick(splits.val)
    args.held_out = "test" if len(splits.test) else "val"
    held_out = pick(splits.test) if len(splits.test) else val_frames
    sizes = np.array([len(f.structure) for f in frames])
    print(
        f"{len(train_frames)} train / {len(val_frames)} val / {len(splits.test)} test "
        f"structures of {sizes.min()}-{sizes.max()} atoms (mean {sizes.mean():.1f}), "
        f"{args.epochs} epochs, batch {args.batch_size}, loss e/f/s/m "
        f"{'/'.join(f'{v:g}' for v in args.loss.values())}; MAE on the {args.held_out} split"
    )

    if args.jobs > 1 and len(args.seeds) > 1:
        per_seed = run_seeds_in_parallel(args, out)
    else:
        per_seed = []
        for seed in args.seeds:
            args.seed = seed
            rows = run_all(cache, out / f"seed-{seed}", train_frames, val_frames, held_out, args)
            rows = {name: {k: v for k, v in r.items() if k != "model"} for name, r in rows.items()}
            atomic_write_bytes(
                out / f"seed-{seed}" / "rows.json", json.dumps(rows, indent=1).encode()
            )
            print_table(rows, f"seed {seed}")
            per_seed.append(rows)
    report = {f"seed {seed}": rows for seed, rows in zip(args.seeds, per_seed, strict=True)}
    if len(per_seed) > 1:
        means = {
            name: {
                "n_params": per_seed[0][name]["n_params"],
                "wall_s": float(np.mean([rows[name]["wall_s"] for rows in per_seed])),
                **{
                    key: float(np.mean([rows[name][key] for rows in per_seed]))
                    for key in ("train_s", "epochs")
                    if key in per_seed[0][name]
                },
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
            print(f"{name:>30}   {sp['e']:.1f} / {sp['f']:.1f} / {sp['s']:.3f} / {sp['m']:.3f}")
        report["mean"] = means
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    print(
        f"\nMAE on the {args.held_out} split; shared 2-core CPU, {args.threads} thread(s) per "
        f"run; results in {out / 'results.json'}"
    )


def run_seeds_in_parallel(args: argparse.Namespace, out: Path) -> list[dict]:
    """Each seed in its own process (``args.jobs`` at a time, one thread each): this same
    command with one seed, its rows read back from ``seed-N/rows.json``."""
    import subprocess
    import sys

    argv = sys.argv[1:]
    base, skip = [], False
    for a in argv:  # drop --seeds and its values, and --jobs N
        if skip and not a.startswith("--"):
            continue
        skip = a in ("--seeds", "--jobs")
        if not skip:
            base.append(a)
    pending, running = list(args.seeds), []
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            log = (out / f"seed-{seed}.log").open("w")
            command = [sys.executable, __file__, *base, "--seeds", str(seed), "--jobs", "1"]
            running.append((seed, subprocess.Popen(command, stdout=log, stderr=log)))
            print(f"  seed {seed}: running, log in {out / f'seed-{seed}.log'}", flush=True)
        seed, process = running.pop(0)
        if process.wait() != 0:
            raise SystemExit(f"seed {seed} failed: see {out / f'seed-{seed}.log'}")
    per_seed = []
    for seed in args.seeds:
        rows = json.loads((out / f"seed-{seed}" / "rows.json").read_text())
        print_table(rows, f"seed {seed}")
        per_seed.append(rows)
    return per_seed


def run_all(
    cache: Path,
    out: Path,
    train_frames: list,
    val_frames: list,
    held_out: list,
    args: argparse.Namespace,
) -> dict[str, dict]:
    """Our conservative and direct runs (and the equal-time conservative run, and the
    reference Trainer, when asked) for ``args.seed``; MAE on ``held_out``."""
    rows = {}
    for mode in args.modes:
        result = run_ours(args.plain if args.whole_run else cache, out, args, mode)
        result["val"] = val_mae(result["model"].predict_structure, held_out)
        rows[f"ours {mode}"] = result
    if args.equal_wall_time:
        conservative, direct = rows["ours conservative"], rows["ours direct"]
        per_epoch = conservative["train_s"] / conservative["epochs"]
        epochs = max(1, round(direct["train_s"] / per_epoch))
        print(
            f"  equal wall time: direct trained {direct['train_s']:.1f} s; conservative "
            f"{per_epoch:.1f} s per epoch -> {epochs} epoch(s)"
        )
        result = run_ours(cache, out / "equal-time", args, "conservative", epochs=epochs)
        result["val"] = val_mae(result["model"].predict_structure, held_out)
        rows["ours conservative, equal time"] = result
    if args.no_reference:
        return rows
    reference = run_reference(train_frames, val_frames, out, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference["val"] = val_mae(
            lambda s: reference["model"].predict_structure(s, task="efsm", batch_size=16),
            held_out,
        )
    rows["reference Trainer"] = reference
    return rows


def print_table(rows: dict[str, dict], title: str) -> None:
    """Held-out MAE, wall time and throughput of each run, and the ratio against the reference
    (or against our conservative run when the reference did not run)."""
    base = "reference Trainer" if "reference Trainer" in rows else next(iter(rows))
    base_rate = rows[base]["structures_per_s"]
    versus = f"struct/s vs {base}"
    print(
        f"\n{title:>30} {'params':>7} {'e meV/at':>9} {'f meV/Å':>8} {'s GPa':>6} {'m μB':>6} "
        f"{'epochs':>6} {'train s':>7} {'wall s':>7} {'struct/s':>8} {versus}"
    )
    for name, r in rows.items():
        v = r["val"]
        ratio = r["structures_per_s"] / base_rate
        train_s = f"{r['train_s']:>7.1f}" if "train_s" in r else f"{'':>7}"
        epochs = f"{r['epochs']:>6.3g}" if "epochs" in r else f"{'':>6}"
        print(
            f"{name:>30} {r['n_params']:>7} {v['e']:>9.1f} {v['f']:>8.1f} {v['s']:>6.3f} "
            f"{v['m']:>6.3f} {epochs} {train_s} {r['wall_s']:>7.1f} "
            f"{r['structures_per_s']:>8.1f} {ratio:>{len(versus) - 1}.2f}x"
        )


if __name__ == "__main__":
    main()
