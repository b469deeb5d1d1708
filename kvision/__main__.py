"""``python -m kvision``: the ``kvision`` command, as ``python -m kvision.cli`` is."""

import sys

from kvision.cli import main

sys.exit(main())
