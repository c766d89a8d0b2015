"""Follow μ through the code as a reader would: which modules a run of the smoke μ search and its report pass
through, in order, counting only the functions that touch `mu` (a parameter, local or attribute named `mu`).

    python scripts/follow_mu.py            # runs the smoke μ search and its report; prints the visits per module
    FOLLOW_MU_VERBOSE=1 python scripts/follow_mu.py    # and the path itself, function by function

Every process of the run (the sweeper, the launcher, each forked trial, the report) is traced through a
`sitecustomize` placed first on PYTHONPATH. `Follower` notes the first call of every function that touches `mu`
(a reader reads each function once, however often it runs) and, whenever its module differs from the previous
one, appends the module to the process's path. A *visit* is one entry of that path: the reader enters that module
again. The goal (issue 17) is at most two visits per module per process; tests/test_report.py checks it for the
report in-process.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NEWLOCALS = 0x0002  # set on functions, not on module or class bodies (definitions, not a path of mu)


class Follower:
    """A `sys.setprofile` hook that records the path of μ through the project's modules (see the docstring)."""

    def __init__(self, roots: tuple[str, ...] = ("sweeper", "trainer"), out: Path | None = None) -> None:
        self.roots, self.out = roots, out
        self.path: list[tuple[str, str]] = []  # (module, function) at each entry into a module
        self.seen: set[Any] = set()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if event != "call" or not code.co_flags & NEWLOCALS or code in self.seen:
            return
        if "mu" not in code.co_varnames and "mu" not in code.co_names:
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(self.roots):
            return
        self.seen.add(code)
        if self.path and self.path[-1][0] == module:
            return
        self.path.append((module, code.co_name))
        if self.out is not None:  # forked trials end with os._exit: write as we go
            with open(self.out / f"{os.getpid()}.txt", "a") as f:
                f.write(f"{module} {code.co_name}\n")

    def visits(self) -> collections.Counter[str]:
        return collections.Counter(module for module, _ in self.path)


SITECUSTOMIZE = """
import os, sys
from pathlib import Path
sys.path.insert(0, {scripts!r})
from follow_mu import Follower
sys.setprofile(Follower(out=Path(os.environ["FOLLOW_MU_OUT"])))
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        site, out, ws = Path(tmp, "site"), Path(tmp, "out"), Path(tmp, "ws")
        site.mkdir()
        out.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(scripts=str(REPO / "scripts")))
        env = os.environ | {
            "PYTHONPATH": f"{site}{os.pathsep}{REPO}",
            "FOLLOW_MU_OUT": str(out),
            "OMP_NUM_THREADS": "1",
        }
        sweeper = [sys.executable, "-m", "sweeper.cli"]
        place = ["study=mu_search", f"workspace={ws}"]
        for command in (["run", *place, "preset=smoke", "weights=random"], ["report", *place, f"--out={tmp}/report"]):
            done = subprocess.run([*sweeper, *command], cwd=REPO, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"sweeper {' '.join(command)} failed:\n{done.stderr}")
        worst = 0
        for trace in sorted(out.glob("*.txt"), key=lambda p: p.stat().st_mtime):
            lines = trace.read_text().splitlines()
            visits = collections.Counter(line.split()[0] for line in lines)
            worst = max(worst, *visits.values())
            print(f"process {trace.stem}: {len(lines)} module entries")
            if os.environ.get("FOLLOW_MU_VERBOSE"):
                print("    " + "\n    ".join(lines))
            for module, n in visits.most_common():
                print(f"  {n:3d}  {module}")
        print(f"most visits of one module in one process: {worst} (goal: at most 2)")


if __name__ == "__main__":
    main()
