"""The ``fastchgnet`` command (``python -m fastchgnet``): every argparse of the package.

    fastchgnet predict STRUCTURE... [--model 0.3.0|PATH] [-o OUT.json|OUT.extxyz] [--batch-size 16]
    fastchgnet relax STRUCTURE... [-o relaxed.extxyz] [--fmax 0.1] [--fixed-cell] [...]
    fastchgnet md STRUCTURE [-o md.extxyz] [--ensemble nvt] [--thermostat nose-hoover] [...]
    fastchgnet data convert|synth|stats ...
    fastchgnet train [--config CONFIG] [--set key=value ...] [--resume]   (= launcher/train.py)
    fastchgnet profile [--device cuda|cpu] [--batch-size 16] [--mode direct] ...

Each command lives in its own module here (predict and the shared readers in commands.py, md.py,
data.py, train.py, profile.py); the layers below hold no argparse. ``main`` (the console
script's entry) imports them when called, with SIGINT and SIGTERM held back until they are
loaded (``signals.held_signals``): a Ctrl-C or SIGTERM while they load ends the command with
one line and 130 / 143, never cutting an import half-way.
"""

from __future__ import annotations

import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    """Run the ``fastchgnet`` command (``cli.commands.main``); returns the exit code. SIGINT or
    SIGTERM while its modules load (torch, ASE, pymatgen: about a second) is held back until
    they are loaded, then gives one line on stderr and 130 / 143, not a traceback."""
    from fastchgnet.signals import held_signals, stop_signal, stop_signals

    try:
        with stop_signals(), held_signals():  # a stop while loading comes once it is loaded:
            from fastchgnet.cli.commands import main as run  # SIGTERM as SystemExit(143)
    except (KeyboardInterrupt, SystemExit) as stop:
        signum = stop_signal(stop)
        if signum is None:
            raise
        print("fastchgnet: interrupted while starting", file=sys.stderr)
        return 128 + signum
    return run(argv)


def __getattr__(name: str) -> Any:
    """``build_parser`` (from ``cli.commands``), imported when first asked for."""
    if name == "build_parser":
        from fastchgnet.cli.commands import build_parser

        return build_parser
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["build_parser", "main"]
