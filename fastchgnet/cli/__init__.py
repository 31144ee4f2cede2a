"""The ``fastchgnet`` command (``python -m fastchgnet``): every argparse of the package.

    fastchgnet predict STRUCTURE... [--model 0.3.0|PATH] [-o OUT.json|OUT.extxyz] [--batch-size 16]
    fastchgnet relax STRUCTURE... [-o relaxed.extxyz] [--fmax 0.1] [--fixed-cell] [...]
    fastchgnet md STRUCTURE [-o md.extxyz] [--ensemble nvt] [--thermostat nose-hoover] [...]
    fastchgnet data convert|synth|stats ...
    fastchgnet train [--config CONFIG] [--set key=value ...] [--resume]   (= launcher/train.py)
    fastchgnet profile [--device cuda|cpu] [--batch-size 16] [--mode direct] ...

Each command lives in its own module here (predict and the shared readers in main.py, md.py,
data.py, train.py, profile.py); the layers below hold no argparse.
"""

from fastchgnet.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
