"""Train FastCHGNet; see fastchgnet/cli/train.py for the options.

python launcher/train.py                                  # quick start (bundled data)
deepspeed --num_gpus 2 launcher/train.py --config configs/mptrj.toml
"""

import sys

from fastchgnet.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
