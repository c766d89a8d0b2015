"""Who moves a RUNNING trial (docs/ARCHITECTURE.md, "The trial state machine"): the sweeper that owns it, for as long
as it renews its lease. The trial carries `owner` (host:pid:process start, so a recycled pid is not taken for the
owner) and `lease_until`, renewed every LEASE_S / 3; a trial whose owner on this host is gone, or whose lease has
expired (any host), is an orphan that another sweeper adopts. Ctrl-C and `--detach` release a sweeper's trials
(lease 0: adopted at once).

`Leases` keeps a stage's trials that this process owns (`mine`) and writes only `owner` and `lease_until`; the
states and phases are the state machine's to change (`sweeper.search.machine`). Imports `sweeper.search.record` and
`trainer`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass, field

from optuna.trial import FrozenTrial, TrialState

from sweeper.search.record import Settled, StageRecord, phase
from trainer.procs import process_start

LEASE_S = float(os.environ.get("SWEEPER_LEASE_S", "60"))  # a trial's owner renews its lease every LEASE_S / 3


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{process_start(os.getpid())}"


def owner_alive(owner: str) -> bool | None:
    """Whether the sweeper process that owns a trial still runs; None when it is on another machine (its lease tells)."""
    host, pid, start = owner.rsplit(":", 2)
    return None if host != socket.gethostname() else process_start(int(pid)) == start


def orphaned(t: FrozenTrial, now: float) -> bool:
    """Whether nobody moves a RUNNING trial any more: its owner (on this host) is gone or its lease expired; one
    claimed but killed before its owner was recorded, once it has been RUNNING for LEASE_S."""
    owner, lease = t.user_attrs.get("owner"), t.user_attrs.get("lease_until")
    if owner is None:
        started = t.datetime_start.timestamp() if t.datetime_start else now  # (RUNNING: always set)
        return now - started > LEASE_S
    return owner_alive(owner) is False or (lease is not None and lease < now)


@dataclass
class Leases:
    """The RUNNING trials of a stage that this process (`owner`) owns, and their leases."""

    record: StageRecord
    owner: str
    mine: set[int] = field(default_factory=set)  # their numbers
    renewed_at: float = 0.0  # time.monotonic()

    def owned(self, *phases: str) -> list[FrozenTrial]:
        """The RUNNING trials this process owns, in one of `phases` (any when none)."""
        return [t for t in self.record.trials(TrialState.RUNNING)
                if t.number in self.mine and (not phases or phase(t) in phases)]  # fmt: skip

    def renew(self) -> list[int]:
        """Every LEASE_S / 3, the leases of my trials renewed; returns those another process finished meanwhile."""
        if time.monotonic() - self.renewed_at < LEASE_S / 3:
            return []
        self.renewed_at = time.monotonic()
        settled: list[int] = []
        for number in list(self.mine):
            try:
                self.record.set_attrs(number, lease_until=time.time() + LEASE_S)
            except Settled:
                settled.append(number)
        return settled

    def adopt(self) -> None:
        """Take over the RUNNING trials nobody moves any more (`orphaned`)."""
        now = time.time()
        for t in self.record.trials(TrialState.RUNNING):
            if t.number not in self.mine and orphaned(t, now):
                with contextlib.suppress(Settled):
                    self.record.set_attrs(t.number, owner=self.owner, lease_until=now + LEASE_S)
                    self.mine.add(t.number)

    def release(self) -> None:
        """Let another sweeper adopt my trials at once (their jobs, if any, keep running)."""
        for number in list(self.mine):
            with contextlib.suppress(Settled):
                self.record.set_attrs(number, lease_until=0.0)
