"""``python -m rusmd``: the daemon's command line.

Runs in: main.
"""

import sys

from rusmd.cli import main

sys.exit(main())
