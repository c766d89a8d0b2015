"""`python -m sweeper.cli ...`: the same as the `sweeper` command."""

import sys

from sweeper.cli.app import app

sys.exit(app())
