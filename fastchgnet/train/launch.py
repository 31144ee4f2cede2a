"""Command line of training (``launcher/train.py`` and ``fastchgnet train`` call ``main``):
one process or data parallel under DeepSpeed, the same script.

    python launcher/train.py                               # quick start: bundled data, minutes
    python launcher/train.py --config configs/mptrj.toml --set data.source=cache/mptrj
    deepspeed --num_gpus 2 launcher/train.py --config configs/mptrj.toml
    deepspeed --hostfile hosts launcher/train.py --config configs/mptrj.toml
    python launcher/train.py --config configs/mptrj.toml --resume   # continue the newest checkpoint

``--set section.key=value`` overrides one setting (repeatable), e.g. ``--set optim.epochs=3
--set model.architecture.forces=direct``. With ``--resume`` the configuration stored in the
newest checkpoint under run.out_dir is used (``--set`` still applies on top).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastchgnet.train.checkpoint import latest_checkpoint, rank_file, read_verified
from fastchgnet.train.config import TrainConfig, apply_overrides, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastchgnet train", description="Train FastCHGNet (see configs/ for examples)."
    )
    parser.add_argument("--config", help="TOML or JSON run config (default: the quick start)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. optim.epochs=3 (repeatable)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in run.out_dir"
    )
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    # deepspeed's launcher passes --local_rank; the rank comes from the environment
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS
    )
    return parser


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """The run's config: file + overrides, or with --resume the checkpoint's + overrides."""
    config = load_config(args.config, args.overrides)
    if not args.resume:
        return config
    folder = latest_checkpoint(Path(config.run.out_dir) / "checkpoints")
    if folder is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {config.run.out_dir}/checkpoints")
    stored = TrainConfig.from_dict(read_verified(rank_file(folder, 0))["config"])
    return apply_overrides(stored, args.overrides)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run; returns the exit code."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run with parsed arguments (``build_parser``'s); returns the exit code."""
    config = resolve_config(args)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=1))
        return 0
    from fastchgnet.train.run import train

    train(config, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
