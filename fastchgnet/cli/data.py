"""``fastchgnet data convert|synth|stats``: graph caches, a labelled synthetic set, statistics.

    fastchgnet data convert SRC -o CACHE [--workers N] [--labels JSON]   frames -> graph cache
    fastchgnet data synth -n N -o OUT.extxyz.gz [--seed S] [--max-atoms A]
    fastchgnet data stats SRC [--energy-key KEY] [--labels JSON] [--graphs]

SRC: MPtrj JSON (.json, .json.gz), a VASP run (folder, .zip, vasprun.xml) or anything ASE
reads (extxyz, ASE db), picked by its suffix.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

#: help of ``--labels`` (convert and stats)
LABELS_HELP = (
    "extxyz/ASE-db label keys and units as JSON, e.g. "
    '\'{"energy": "E_dft", "stress": "S", "stress_unit": "kBar", "stress_sign": "vasp"}\' '
    "(fastchgnet.data.ase_labels.AseLabels)"
)


def add_commands(sub: Any) -> None:
    """Add ``data convert|synth|stats`` to the ``fastchgnet`` subparsers; each sets
    ``command`` to its full name ("data convert"), which error messages start with."""
    data = sub.add_parser("data", help="datasets and graph caches")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    convert = data_sub.add_parser("convert", help="frames -> graph cache")
    convert.add_argument("source", help="MPtrj JSON, extxyz/ASE file, or VASP run dir/zip")
    convert.add_argument("-o", "--out", required=True, help="cache folder to write or resume")
    convert.add_argument("--atom-cutoff", type=float, default=6.0, help="Å")
    convert.add_argument("--bond-cutoff", type=float, default=3.0, help="Å")
    convert.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    convert.add_argument("--shard-size", type=int, default=4096, help="source frames per shard")
    convert.add_argument(
        "--energy-key",
        default="corrected_total_energy",
        help="MPtrj energy field (see fastchgnet.data.sources.MPTRJ_ENERGY_KEYS)",
    )
    convert.add_argument("--labels", default="{}", help=LABELS_HELP)
    convert.set_defaults(func=run_convert, command="data convert")

    synth = data_sub.add_parser(
        "synth",
        help="varied crystals labelled by the reference CHGNet (needs the chgnet package)",
    )
    synth.add_argument("-n", type=int, default=2000, help="number of structures")
    synth.add_argument("-o", "--out", required=True, help="output .extxyz or .extxyz.gz")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--max-atoms", type=int, default=16, help="atoms per crystal at most")
    synth.add_argument("--model", default="0.3.0", help="reference checkpoint for the labels")
    synth.add_argument("--batch-size", type=int, default=32)
    synth.set_defaults(func=run_synth, command="data synth")

    stats = data_sub.add_parser("stats", help="element counts, sizes, label ranges, outliers")
    stats.add_argument("source")
    stats.add_argument("--energy-key", default="corrected_total_energy", help="MPtrj energy")
    stats.add_argument("--labels", default="{}", help=LABELS_HELP)
    stats.add_argument(
        "--graphs",
        action="store_true",
        help="also build each frame's crystal graph as convert does (isolated or overlapping "
        "atoms; a neighbour list per frame, so slower)",
    )
    stats.add_argument("--atom-cutoff", type=float, default=6.0, help="Å, with --graphs")
    stats.add_argument("--bond-cutoff", type=float, default=3.0, help="Å, with --graphs")
    stats.set_defaults(func=run_stats, command="data stats")


def _frames(args: argparse.Namespace, scratch: Path | None = None) -> Any:
    """The frames of ``args.source``; a gzipped ASE file is read from a decompressed copy
    under ``scratch`` (default: the system's temporary folder). A graph cache folder (with
    manifest.json) is a ValueError saying that frame sources are read here, not caches."""
    from fastchgnet.data.ase_labels import labels_from_json
    from fastchgnet.data.sources import read_frames

    if (Path(args.source) / "manifest.json").is_file():
        raise ValueError(
            f"{args.source}: a graph cache (it has manifest.json); {args.command} reads frame "
            "sources (MPtrj JSON, extxyz/ASE db, VASP runs), not graph caches"
        )
    labels = labels_from_json(args.labels)
    return read_frames(args.source, args.energy_key, labels, scratch=scratch)


def run_convert(args: argparse.Namespace) -> int | None:
    """Convert ``args.source`` into the graph cache ``args.out`` (resumable); a gzipped ASE
    source is decompressed beside the cache while it is read (not in a small /tmp). Stopped by
    SIGINT or SIGTERM it prints one line (the complete shards kept) and returns 130 or 143;
    where every frame was skipped (none usable), one line naming the list and 1. The missing
    parents of ``args.out`` it makes are removed again where it leaves them empty (failed or
    stopped before a shard was finished: the cache folder is gone too); a folder that existed
    before stays."""
    from fastchgnet.data.folder_lock import made_folders

    if args.shard_size < 1:
        raise ValueError(f"--shard-size {args.shard_size}: must be at least 1 (frames per shard)")
    beside = Path(args.out).absolute().parent
    frames = _frames(args, scratch=beside)  # a missing or empty source fails here, before
    with made_folders(beside, keep_empty=False):  # any folder is made; a cache written
        return _convert_into(args, frames)  # into them keeps them


def _convert_into(args: argparse.Namespace, frames: Any) -> int | None:
    """``run_convert`` once the cache's parent folder exists."""
    from fastchgnet.data.convert import convert
    from fastchgnet.signals import stop_signal

    try:
        summary = convert(
            frames, args.out, args.atom_cutoff, args.bond_cutoff, args.workers, args.shard_size
        )
    except (KeyboardInterrupt, SystemExit) as stop:  # SIGINT; SIGTERM (``signals.stop_signals``)
        signum = stop_signal(stop)
        if signum is None:
            raise
        shards = len(list(Path(args.out).glob("shard-*/shard.json")))
        print(
            f"data convert interrupted: {shards} complete shard(s) kept in {args.out}; run the "
            "same command again to continue",
            file=sys.stderr,
        )
        return 128 + signum
    if summary.n_skipped:
        print("\n".join(skipped_lines(Path(args.out) / "skipped.json")))
    if summary.n_structures == 0 and summary.n_skipped:  # nothing to train on: say so
        print(
            f"data convert: no frame of {args.source} could be used: {summary.n_skipped} "
            f"skipped, the reasons in {Path(args.out) / 'skipped.json'}",
            file=sys.stderr,
        )
        return 1
    return None


#: skipped frames ``data convert`` names after its summary (the rest are counted)
SHOWN_SKIPS = 3


def skipped_lines(skipped_json: Path, shown: int = SHOWN_SKIPS) -> list[str]:
    """The first ``shown`` entries of a cache's skipped.json as ``skipped material/frame:
    reason`` lines, and one line counting the rest; [] when it lists none."""
    skipped = json.loads(skipped_json.read_text())
    lines = [
        f"  skipped {'/'.join(filter(None, (s['material_id'], s['frame_id'])))}: {s['reason']}"
        for s in skipped[:shown]
    ]
    if len(skipped) > shown:
        lines.append(f"  and {len(skipped) - shown} more in {skipped_json}")
    return lines


def run_stats(args: argparse.Namespace) -> None:
    """Print the statistics of ``args.source`` (one streaming pass)."""
    from fastchgnet.data.stats import dataset_stats, format_stats

    graphs = (args.atom_cutoff, args.bond_cutoff) if args.graphs else None
    print(format_stats(dataset_stats(_frames(args), graphs=graphs)))


def run_synth(args: argparse.Namespace) -> None:
    """Write the synthetic labelled set and print a summary."""
    from fastchgnet.cli.output_files import check_frames_file
    from fastchgnet.data.reference_labels import synth

    if args.n < 1:
        raise ValueError(f"-n {args.n}: must be at least 1 structure")
    if args.max_atoms < 1:
        raise ValueError(f"--max-atoms {args.max_atoms}: must be at least 1")
    if not args.out.lower().endswith((".extxyz", ".extxyz.gz", ".xyz", ".xyz.gz")):
        raise ValueError(f"-o {args.out}: synth writes extxyz; name it .extxyz or .extxyz.gz")
    check_frames_file(args.out, "-o", several=True)  # a folder, a missing folder
    start = time.perf_counter()
    path = synth(
        args.n,
        args.out,
        seed=args.seed,
        max_atoms=args.max_atoms,
        model_name=args.model,
        batch_size=args.batch_size,
    )
    print(
        f"wrote {args.n} structures labelled by CHGNet {args.model} to {path} "
        f"({path.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - start:.0f} s)"
    )
