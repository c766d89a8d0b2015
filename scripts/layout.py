"""The layout blocks of README.md and docs/ARCHITECTURE.md, generated from the tree: every package and module with
the first sentence of its docstring. `python scripts/layout.py` prints it; `--write` rewrites the blocks between
`<!-- layout -->` and `<!-- /layout -->`; tests/test_layers.py fails when they are stale."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "ARCHITECTURE.md"]
BLOCK = re.compile(r"(<!-- layout -->\n```\n).*?(```\n<!-- /layout -->)", re.S)
WIDTH = 118


def summary(path: Path) -> str:
    """The docstring's first sentence, on one line, cut to fit."""
    doc = " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split("\n\n")[0].split())
    return re.split(r"(?<!\beq)(?<!\beqs)(?<!\bal)(?<!e\.g)(?<!i\.e)(?<=[a-z0-9)`'])\. ", doc, maxsplit=1)[0].rstrip(
        "."
    )


def lines(package: Path, depth: int = 0) -> list[str]:
    pad = "  " * depth
    out = [f"{pad}{package.name if depth else package.relative_to(ROOT)}/".ljust(26) + summary(package / "__init__.py")]
    for path in sorted(package.glob("*.py")):
        if path.name not in ("__init__.py", "__main__.py"):
            out.append(f"{pad}  {path.name}".ljust(26) + summary(path))
    for sub in sorted(p for p in package.iterdir() if (p / "__init__.py").exists()):
        out += lines(sub, depth + 1)
    return out


def render() -> str:
    text = []
    for line in lines(ROOT / "sweeper") + lines(ROOT / "trainer"):
        text.append(line if len(line) <= WIDTH else line[: WIDTH - 1].rsplit(" ", 1)[0] + " …")
    return "\n".join(text) + "\n"


def rewritten(path: Path) -> str:
    """The file's text with its layout block regenerated."""
    return BLOCK.sub(lambda m: m.group(1) + render() + m.group(2), path.read_text())


if __name__ == "__main__":
    if "--write" in sys.argv:
        for p in DOCS:
            p.write_text(rewritten(p))
    else:
        print(render(), end="")
