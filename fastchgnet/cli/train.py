"""Command line of training (``launcher/train.py`` and ``fastchgnet train`` call ``main``):
one process or data parallel under DeepSpeed, the same script.

    python launcher/train.py                               # quick start: bundled data, minutes
    python launcher/train.py --config configs/mptrj.toml --set data.source=cache/mptrj
    deepspeed --num_gpus 2 launcher/train.py --config configs/mptrj.toml
    deepspeed --hostfile hosts launcher/train.py --config configs/mptrj.toml
    python launcher/train.py --config configs/mptrj.toml --resume   # continue the newest checkpoint

``--set section.key=value`` overrides one setting (repeatable), e.g. ``--set optim.epochs=3
--set model.architecture.forces=direct``. With ``--resume`` the configuration stored in the
newest checkpoint under run.out_dir is used; what ``--set`` or the ``--config`` file changes
applies on top, and a change of the run's batches or model is refused (``resume_config``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from fastchgnet.cli.resume_config import check_resume_changes, file_changes, with_changes
from fastchgnet.train.checkpoint import CheckpointError, stored_config
from fastchgnet.train.config import TrainConfig, apply_overrides, load_config
from fastchgnet.train.outputs import (
    PREVIOUS,
    completed,
    restore_previous,
    run_lock,
    settle_previous,
    start_over,
)

#: What a user can cause and fix (a bad key or value, a missing file, a damaged checkpoint):
#: one line on stderr, no traceback (``user_error``)
USER_ERRORS = (ValueError, FileNotFoundError, CheckpointError)


def user_error(prog: str, error: Exception, echo: bool = False) -> int:
    """Print ``error`` on stderr after ``prog`` (our messages are one line); returns 1. With
    ``echo`` (a rank other than 0 whose error rank 0 meets too: ``launchers.echo_of_rank_0``)
    nothing is printed, so the line shows once."""
    if not echo:
        print(f"{prog}: error: {error}", file=sys.stderr)
    return 1


PROG = "fastchgnet train"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train FastCHGNet (see configs/ for examples)."
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
    add_run_folder_options(parser)
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    # deepspeed's launcher passes --local_rank; the rank comes from the environment
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS
    )
    return parser


def add_run_folder_options(parser: argparse.ArgumentParser) -> None:
    """``--resume`` and ``--overwrite``, which say what to do with a run.out_dir that holds a
    run (``train.outputs.start_over``; ``resolve_config`` reads them)."""
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in run.out_dir"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a run.out_dir that holds a run: its checkpoints, logs, metrics and "
        "models are removed once the new run has passed its checks and starts training (a "
        "refused run leaves them; the data cache is kept; without --overwrite, such a folder "
        "is refused: --resume continues it)",
    )


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """The run's config: file + overrides, or with --resume the checkpoint's + overrides."""
    config = load_config(args.config, args.overrides)
    if not args.resume:
        return config
    out = Path(config.run.out_dir)
    stored = stored_config(out / "checkpoints")
    if stored is None and (out / PREVIOUS).is_dir():  # a --overwrite stopped before training
        stored = _resume_set_aside(out)
    if stored is None:
        root = Path(config.run.out_dir) / "checkpoints"
        steps = sorted(path.name for path in root.glob("step-*"))
        uncommitted = (
            f" ({', '.join(steps)} without latest.json, which a checkpoint gets once every "
            "rank has written it: not a complete checkpoint)"
            if steps
            else ""
        )
        raise FileNotFoundError(f"--resume: no checkpoint under {root}{uncommitted}")
    stored = TrainConfig.from_dict(stored).to_dict()
    filed = stored  # the keys the file sets to other values, as --set would
    if args.config:
        filed = with_changes(stored, file_changes(args.config, stored))
        check_resume_changes(stored, filed, source=f"--config {args.config}")
    resumed = apply_overrides(TrainConfig.from_dict(filed), args.overrides)
    check_resume_changes(filed, resumed.to_dict())
    return resumed


def nothing_to_resume(out: Path, config: TrainConfig, rank: int = 0) -> bool:
    """Whether the run in ``out`` is already complete under ``config``
    (``train.outputs.completed``); if so, say so in one line (main rank) and change nothing."""
    reason = completed(out, config)
    if reason is not None and rank == 0:
        print(f"run already complete ({reason}): nothing to do", flush=True)
    return reason is not None


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run; returns the exit code."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run with parsed arguments (``build_parser``'s); returns the exit code.

    A bad config key or value, a missing file or a damaged checkpoint ends in one line on
    stderr (exit 1); SIGINT or SIGTERM in one process in a checkpoint at the step reached and
    one line saying so (exit 130 or 143; ``fastchgnet.train.interrupt``). Under a launcher
    (several ranks) an error is printed once, by the rank it happened on, naming it; the
    ranks that stop because of it print nothing, and a rank that finds a peer gone without a
    word (killed) prints one line naming it (exit 1, or 128 + the signal), so a dead rank
    shows up by name instead of as a hang or a bare SIGTERM (``_failed``).
    """
    try:
        config = resolve_config(args)
    except USER_ERRORS as error:  # every rank reads the same arguments and files
        from fastchgnet.train.launchers import echo_of_rank_0

        return user_error(PROG, error, echo=echo_of_rank_0())
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=1))
        return 0
    from fastchgnet.train.launchers import launcher_rank_and_world

    out, rank = Path(config.run.out_dir), launcher_rank_and_world()[0]
    with contextlib.ExitStack() as lock:
        try:  # the main rank, for the whole run: no second run writes beside this one
            lock.enter_context(run_lock(out, take=rank == 0))
        except ValueError as error:
            return user_error(PROG, error)
        return _run_locked(args, config, out, rank)


def _resume_set_aside(out: Path) -> dict | None:
    """The stored config of the run a --overwrite stopped before training set aside in
    ``out``, put back first (one process, holding the run lock: a live run's aside is its
    own); under a launcher, ValueError saying how to put it back."""
    from fastchgnet.train.launchers import launcher_rank_and_world

    if launcher_rank_and_world()[1] > 1:
        raise ValueError(
            f"--resume: the run in {out} was set aside by a --overwrite stopped before "
            f"training ({out / PREVIOUS}); start the command once without --resume or "
            "--overwrite (it puts the run back and stops), then --resume"
        )
    with run_lock(out):
        restore_previous(out)
    return stored_config(out / "checkpoints")


def _run_locked(args: argparse.Namespace, config: TrainConfig, out: Path, rank: int) -> int:
    """``run`` once the run folder is this run's: resume or start over, train, leave the group.
    An overwritten run's outputs (``start_over``) come back where this one ends before
    training (``settle_previous``)."""
    if args.resume and nothing_to_resume(out, config, rank):
        return 0
    if not args.resume:
        try:
            start_over(out, args.overwrite, remove=rank == 0)
        except ValueError as error:
            from fastchgnet.train.launchers import echo_of_rank_0

            return user_error(PROG, error, echo=echo_of_rank_0())
    code = 1
    try:
        code = _train(args, config, out, rank)
        return code
    finally:
        if rank == 0 and not args.resume:
            settle_previous(out, succeeded=code == 0)


def _train(args: argparse.Namespace, config: TrainConfig, out: Path, rank: int) -> int:
    """Train and leave the process group; returns the exit code."""
    from fastchgnet.train.launchers import launched_distributed
    from fastchgnet.train.run import train

    distributed = launched_distributed()
    if distributed:
        _report_on_signal(out, rank)
    from fastchgnet.train.loop import NonFiniteLossError

    try:
        train(config, resume=args.resume)
    except NonFiniteLossError as error:  # every rank stops on the same agreed skips
        return user_error(PROG, diverged(error, out), echo=rank != 0)
    except KeyboardInterrupt as error:
        return interrupted(error, out)
    except Exception as error:
        if distributed:
            return _failed(out, rank, error)
        if isinstance(error, USER_ERRORS):
            return user_error(PROG, error)
        raise
    from fastchgnet.train import collectives

    try:  # the process ends here: every rank got this far, unless a peer died after training
        collectives.leave_process_group()
    except Exception as error:
        return _failed(out, rank, error)
    return 0


def diverged(error: Exception, out: Path) -> str:
    """The one line of a run stopped by non-finite losses (``loop.NonFiniteLossError``): the
    reason and where a resume at a lower learning rate would start."""
    from fastchgnet.train.checkpoint import latest_step

    step = latest_step(out / "checkpoints")
    if step is None:
        return f"{error}; no checkpoint was written before it"
    return (
        f"{error}; the newest checkpoint (step {step}) continues with --resume --set "
        "optim.lr=<lower>"
    )


def interrupted(error: KeyboardInterrupt, out: Path) -> int:
    """Print one line saying where a run stopped by a signal stands (``train.interrupt``; a
    plain Ctrl-C, where no handler caught it, names the newest checkpoint in ``out``) and
    return the exit code: 128 + the signal. Under a launcher, whose Ctrl-C reaches every rank,
    the line is printed once: by the lowest rank the signal stopped (``failures.interrupted``),
    or by rank 0 before the ranks have begun a launch (``launchers.echo_of_rank_0``)."""
    from fastchgnet.train import failures
    from fastchgnet.train.checkpoint import latest_step
    from fastchgnet.train.interrupt import Interrupted
    from fastchgnet.train.launchers import echo_of_rank_0

    if not isinstance(error, Interrupted):  # Ctrl-C outside a handler, or a job's ``Stopped``
        error = Interrupted(getattr(error, "signum", signal.SIGINT))
    if error.checkpoint is None:  # stopped outside training (a fine-tune's evaluations)
        error.checkpoint = latest_step(out / "checkpoints")
    said: str | None = error.message()
    if failures.known():
        said = failures.interrupted(error.signum, said)
    elif echo_of_rank_0():
        said = None
    failures.say_once(said)  # once, whichever path of this process gets here first
    return error.exit_code


def _failed(out: Path, rank: int, error: Exception) -> int:
    """Report a rank's failure under a launcher so that a user reads it once (exit code 1):
    the rank it happened on prints it, naming itself (a user error in one line, any other
    with its traceback); a rank that stops because another failed prints nothing, or one
    line naming a peer that is gone without a word (``train.failures``). Before the ranks
    have begun a launch (or without one), a user error is printed by rank 0
    (``launchers.echo_of_rank_0``) and any other error as one line naming the gone peers."""
    import traceback

    from fastchgnet.train import failures
    from fastchgnet.train.collectives import PeerStopped
    from fastchgnet.train.launchers import echo_of_rank_0

    if isinstance(error, PeerStopped):  # rank 0 refused the data and says why
        failures.consequence()  # so that rank 0 does not take this rank for gone
        return 1
    if failures.noted_interrupt() is not None:  # a Ctrl-C that stopped the peers too
        return interrupted(KeyboardInterrupt(), out)
    user = isinstance(error, USER_ERRORS)
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    summary = str(error) if user else f"{type(error).__name__}: {first_line}"
    if not failures.known():
        if user:
            return user_error(PROG, error, echo=echo_of_rank_0())
        print(f"{_peers(out, rank)} ({summary})", file=sys.stderr)
        return 1
    own = f"{PROG}: error: rank {rank}: {error}"
    if not user:
        trace = "".join(traceback.format_exception(error)).rstrip()
        own = f"{PROG}: error: rank {rank} failed:\n{trace}"
    said = failures.verdict(summary, own, peers=not user)
    if said is not None:
        print(said, file=sys.stderr, flush=True)
    return 1


def _peers(out: Path, rank: int, grace_s: float = 5.0) -> str:
    from fastchgnet.train.collectives import peer_report

    return peer_report(out, rank, grace_s=grace_s)


def _report_on_signal(out: Path, rank: int) -> None:
    """On SIGTERM (DeepSpeed's launcher stops every rank when one exits with an error, or a
    user stops the run) print which peers are gone (nothing where a rank that failed said
    why; this rank's own error where it was about to say it: ``failures.on_stop``), put
    back an old run a --overwrite set aside where this one had not started training (the
    main rank: ``restore_previous``; the exit skips ``_run_locked``'s own), then exit at
    once: the launcher has already seen the rank that ended exit, so no grace for a dying
    peer (a plain stop would wait it out on every rank). The exit skips ``finally`` blocks: a
    gzipped source's decompressed copy in ``out`` (a conversion under way) is removed here.

    A Ctrl-C in a terminal reaches the launcher and every rank at once, and the launcher
    answers it with SIGTERM, often before a rank has said it was interrupted: a rank that saw
    SIGINT (its handler here notes it, then raises KeyboardInterrupt as Python's own does)
    takes that SIGTERM for the user's stop, and the "interrupted ..." line is printed once
    (``interrupted``), not a line per rank that its peers are alive. A rank blocked in a
    collective runs neither handler until it returns: a thread woken by the signal itself
    records it at once (``failures.watch_interrupts``), so a higher rank that stopped first
    leaves the line to this one."""
    from fastchgnet.train import failures  # not in the handler

    seen_interrupt: list[int] = []
    failures.watch_interrupts(lambda: interrupted(KeyboardInterrupt(), out))

    def interrupt(signum: int, frame: object) -> None:
        seen_interrupt.append(signum)
        failures.confirm_interrupt()
        raise KeyboardInterrupt

    def stop(signum: int, frame: object) -> None:
        if seen_interrupt and failures.saying():
            return  # this thread was printing the line: it ends the process after
        if seen_interrupt:  # the launcher's answer to the user's Ctrl-C
            code = interrupted(KeyboardInterrupt(), out)
        else:  # nothing where another rank's failure stopped the run and it said why
            code = 128 + signum
            message = failures.on_stop(
                lambda: f"{_peers(out, rank, grace_s=0.0)} (signal {signum})"
            )
            if message is not None:
                print(message, file=sys.stderr, flush=True)
        if rank == 0:
            restore_previous(out)
        # a gzipped source's copy, decompressed in ``out`` while converting (no import in a
        # signal handler: a source read has imported the module)
        sources = sys.modules.get("fastchgnet.data.sources")
        if sources is not None and out.is_dir():
            sources.remove_stale_copies(out, own=True)
        os._exit(code)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
    sys.exit(main())
