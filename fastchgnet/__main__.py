"""``python -m fastchgnet ...``: the ``fastchgnet`` command."""

import sys

from fastchgnet.cli import main

sys.exit(main())
