"""``python -m heterogui``: the command line."""

import sys

from heterogui.cli import main

sys.exit(main())
