"""One trial in its own process: `python -m sweeper.worker TRIAL_DIR`.

Loads `TRIAL_DIR/config.yaml`, trains it (resuming from `ckpt/last.pt` when present) and leaves
`result.json`. Any failure still leaves a `result.json` with status "failed" and the reason, so the
orchestrator can tell a failed trial from a killed one (no result at all).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

import yaml

from sweeper.workspace import workspace_of
from trainer.files import write_json_atomic
from trainer.config import config_from_dict


def run_trial(trial_dir: Path) -> dict[str, Any]:
    from trainer.train import train

    trial_dir = Path(trial_dir).resolve()
    cfg = config_from_dict(yaml.safe_load((trial_dir / "config.yaml").read_text()))
    return train(cfg, trial_dir, workspace_of(trial_dir) / "cache", progress=False)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m sweeper.worker TRIAL_DIR", file=sys.stderr)
        return 2
    trial_dir = Path(argv[0])
    try:
        result = run_trial(trial_dir)
    except Exception as e:  # recorded for the orchestrator, which retries or reports it
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(e).__name__}: {e}".splitlines()[0]}
        if not (trial_dir / "result.json").exists():
            write_json_atomic(trial_dir / "result.json", result)
    return 0 if result.get("status") == "complete" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
