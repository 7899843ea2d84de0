"""``python -m rusmctl``.

Runs in: rusmctl.
"""

import sys

from rusmctl.cli import main

sys.exit(main())
