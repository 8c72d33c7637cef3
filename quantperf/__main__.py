"""`python -m quantperf`: the `quantperf` command line (quantperf.cli)."""

import sys

from .cli import main

sys.exit(main())
