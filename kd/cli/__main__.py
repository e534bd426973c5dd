"""``python -m kd.cli``: the ``kd`` command without its console script."""

import sys

from kd.cli import main

sys.exit(main())
