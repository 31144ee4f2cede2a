"""Command line of fine-tuning with a before/after report (``launcher/finetune.py`` calls
``main``); the work is ``fastchgnet.train.finetune.finetune``.

    python launcher/finetune.py --config configs/finetune.toml \\
        --eval ../shared/data/reference/parse-vasp-with-magmoms.zip
    fastchgnet finetune --config configs/finetune.toml --eval ...   (the same)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from fastchgnet.cli.train import (
    USER_ERRORS,
    add_run_folder_options,
    interrupted,
    nothing_to_resume,
    resolve_config,
    user_error,
)
from fastchgnet.signals import StopSignals
from fastchgnet.train.config import TrainConfig
from fastchgnet.train.finetune import finetune
from fastchgnet.train.interrupt import Interrupted
from fastchgnet.train.outputs import run_lock, settle_previous, start_over

PROG = "launcher/finetune.py"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fine-tune (configs/finetune.toml) and report MAE before and after.",
    )
    parser.add_argument("--config", default="configs/finetune.toml", help="run config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--eval",
        dest="eval_sources",
        action="append",
        default=[],
        metavar="PATH",
        help="frames to evaluate before and after, never trained on (repeatable)",
    )
    add_run_folder_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, fine-tune, print the before/after table; returns the exit code (2,
    with one line, under a multi-process launcher: the report runs in one process). A bad
    config key or value, a missing file or a damaged checkpoint is one line on stderr (exit
    1), as in ``launcher/train.py``, and so are SIGINT and SIGTERM (exit 130, 143) and a
    run.out_dir that holds a run unless ``--resume`` continues it or ``--overwrite`` starts
    over there."""
    return run(build_parser().parse_args(argv))


def _prog(args: argparse.Namespace) -> str:
    """The command's name in its messages: ``fastchgnet finetune`` or the launcher's."""
    return "fastchgnet finetune" if getattr(args, "command", None) == "finetune" else PROG


def run(args: argparse.Namespace) -> int:
    """``main`` with parsed arguments (``build_parser``'s; also ``fastchgnet finetune``)."""
    from fastchgnet.train.launchers import launched_distributed

    if launched_distributed():
        # every rank would convert the same cache, evaluate everything and append the report,
        # and read model.pt while rank 0 still writes it
        print(
            "launcher/finetune.py (fine-tuning with a before/after report) runs in one "
            "process; to fine-tune on several GPUs run `deepspeed launcher/train.py --config "
            "configs/finetune.toml`",
            file=sys.stderr,
        )
        return 2
    try:
        config = resolve_config(args)
    except USER_ERRORS as error:
        return user_error(_prog(args), error)
    with contextlib.ExitStack() as lock:
        try:  # for the whole run: no second run writes beside this one
            lock.enter_context(run_lock(Path(config.run.out_dir)))
        except ValueError as error:
            return user_error(_prog(args), error)
        return _finetune_locked(args, config)


def _finetune_locked(args: argparse.Namespace, config: TrainConfig) -> int:
    """``main`` once the run folder is this process's: resume or start over, fine-tune, report."""
    try:
        out = Path(config.run.out_dir)
        # complete: trained and reported (a run stopped after training still writes its report)
        reported = (out / "finetune-report.csv").is_file()
        if args.resume and reported and nothing_to_resume(out, config):
            return 0
        if not args.resume:
            start_over(Path(config.run.out_dir), args.overwrite, remove=True)
    except USER_ERRORS as error:
        return user_error(_prog(args), error)
    code = 1
    try:  # an overwritten run's outputs come back where this one ends before training
        code = _finetune_and_report(args, config)
        return code
    finally:
        if not args.resume:
            settle_previous(Path(config.run.out_dir), succeeded=code == 0)


def _finetune_and_report(args: argparse.Namespace, config: TrainConfig) -> int:
    """Fine-tune and print the report; returns the exit code."""
    try:  # SIGTERM in the evaluations as in training (which installs its own): one line
        with StopSignals(Interrupted).installed():
            report = finetune(config, tuple(args.eval_sources), resume=args.resume)
    except USER_ERRORS as error:
        return user_error(_prog(args), error)
    except KeyboardInterrupt as error:
        return interrupted(error, Path(config.run.out_dir))
    print(
        f"\nfine-tuning: {report.n_train} frames trained on, {report.n_heldout} held out "
        f"(split_by={config.data.split_by}); MAE before and after\n" + report.table(),
        flush=True,
    )
    return 0
