"""A trial's identity: which settings make two trainings the same (its config hash), and the settings a reader
compares trials by. Reuse, the stage's recorded settings and `sweeper plan` all go through `config_hash`."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from sweeper.core.studies import label
from trainer.config import NOT_COMPUTATION, flatten, parse_value

BOOKKEEPING = NOT_COMPUTATION | {"train.log_every", "train.ckpt_every"}  # not part of a trial's identity
SETTINGS_KEYS = ("mu", "beta", "arch", "loss.perceptual")


def config_hash(config: dict[str, Any]) -> str:
    """A trial's identity: its resolved config minus bookkeeping keys. Equal hashes = the same training.

    Without a ResNet loss (mu=inf, or loss.perceptual=vgg) beta and c change nothing, so they are left out:
    a beta stage at a winning mu=inf reuses one run instead of training four identical ones.
    """
    flat = flatten(config)
    resnet_used = flat["loss.perceptual"] == "static" or (
        flat["loss.perceptual"] == "dp" and not math.isinf(float(parse_value(str(flat["mu"]))))
    )
    ignored = BOOKKEEPING if resnet_used else BOOKKEEPING | {"beta", "loss.c"}
    identity = {k: v for k, v in flat.items() if k not in ignored}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trial_settings(config: dict[str, Any]) -> dict[str, str]:
    """The settings a reader compares trials by, as labels (mu=inf as "inf"): the `settings` trial attr."""
    f = flatten(config)
    return {k: label(f[k]) for k in SETTINGS_KEYS}
