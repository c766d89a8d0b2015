"""Progress bars (tqdm, on stderr) that draw on every terminal, including one whose size was never set.

A pseudo-terminal opened without a size (`script` run from a non-terminal, a detached tmux, some CI
runners) reports 0 columns and 0 rows; tqdm then hides every bar (none fits in 0 rows) and nothing seems
to move. `bar` falls back to $COLUMNS x $LINES, else 80 x 24, there.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from tqdm import tqdm


def terminal_columns() -> int:
    """stderr's terminal width; 0 when stderr is no terminal or one without a size (then its rows are 0 too)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 0


def bar(**kwargs: Any) -> tqdm:
    """A tqdm bar sized as the terminal (redrawn when it is resized), or, where the terminal has no size, as
    $COLUMNS x $LINES or 80 x 24."""
    if terminal_columns() > 0:
        return tqdm(**kwargs, dynamic_ncols=True)
    size = shutil.get_terminal_size((80, 24))
    return tqdm(**kwargs, ncols=size.columns, nrows=size.lines)
