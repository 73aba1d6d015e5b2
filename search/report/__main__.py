"""``python -m search.report``: the command line of ``search.report.cli``."""

import sys

from search.report.cli import main

sys.exit(main())
