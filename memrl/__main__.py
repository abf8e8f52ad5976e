"""``python -m memrl``: the console script (also how distributed launchers start it: ``torchrun -m memrl evaluate ...``)."""

import sys

from memrl.cli import main

sys.exit(main())
