"""Fine-tune CHGNet 0.3.0 and print MAE before and after; see fastchgnet/cli/finetune.py.

python launcher/finetune.py --config configs/finetune.toml \
    --eval ../shared/data/reference/parse-vasp-with-magmoms.zip
"""

import sys

from fastchgnet.cli.finetune import main

if __name__ == "__main__":
    sys.exit(main())
