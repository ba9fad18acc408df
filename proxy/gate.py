"""The write gate: pause new work for a moment, let open transactions finish, release it.

While the gate is closed, any command from a client that is not inside a transaction waits
(reads too: during a switchover there is no primary to read consistently from). Statements
inside an open transaction go on, so that transaction can finish; `pause()` returns once no
upstream work is in flight, killing what is still open after `pause.drain_timeout`. Bounds keep
a pause from turning into an outage: it ends by itself after `pause.max_pause`, and no more
than `pause.max_queued` statements wait; beyond that, clients get a clear error at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ClientError
from .protocol.constants import ErrorCode

if TYPE_CHECKING:
    from .config import PauseConfig
    from .tier import Tier

log = logging.getLogger("sluice.gate")

DRAIN_POLL = 0.005


@dataclass(slots=True)
class PauseResult:
    """What a PAUSE did, for the admin answer and the switchover record."""

    drained_seconds: float
    killed: int


class Gate:
    __slots__ = (
        "_auto_resume",
        "_released",
        "closed",
        "config",
        "generation",
        "paused_at",
        "queued",
        "tier",
    )

    def __init__(self, tier: Tier, config: PauseConfig) -> None:
        self.tier = tier
        self.config = config
        self.closed = False
        self.generation = 0  # counts pauses: a writer check spanning one is stale
        self.queued = 0
        self.paused_at = 0.0
        self._released: asyncio.Future[None] | None = None
        self._auto_resume: asyncio.TimerHandle | None = None

    async def wait(self) -> None:
        """Wait for RESUME (or the end of max_pause); refuse at once past max_queued."""
        released = self._released
        if not self.closed or released is None:
            return
        if self.queued >= self.config.max_queued:
            raise ClientError(
                ErrorCode.LOCK_WAIT_TIMEOUT,
                f"work is paused (a switchover is in progress) and {self.queued} statements "
                "are already waiting (pause.max_queued); retry in a moment",
            )
        self.queued += 1
        try:
            await asyncio.shield(released)
        finally:
            self.queued -= 1

    async def pause(self) -> PauseResult:
        """Close the gate and return once no upstream work is in flight."""
        started = time.monotonic()
        if not self.closed:
            loop = asyncio.get_running_loop()
            self.closed = True
            self.tier.update_hold()
            self.generation += 1
            self.paused_at = started
            self._released = loop.create_future()
            self._auto_resume = loop.call_later(self.config.max_pause, self._expired)
            log.info("paused: new work waits; draining work in flight")
        deadline = started + self.config.drain_timeout
        killed = 0
        while True:
            in_flight = [s for s in self.tier.sessions.values() if s.has_upstream_work()]
            if not in_flight or not self.closed:
                break
            if time.monotonic() >= deadline:
                for session in in_flight:
                    session.kill_for_pause(self.config.drain_timeout)
                killed = len(in_flight)
                log.warning(
                    "pause: killed %d transactions still open after drain_timeout %gs",
                    killed,
                    self.config.drain_timeout,
                )
                break
            await asyncio.sleep(DRAIN_POLL)
        drained = time.monotonic() - started
        log.info("paused after %.3fs (%d killed, %d waiting)", drained, killed, self.queued)
        return PauseResult(drained, killed)

    def resume(self) -> float:
        """Open the gate; returns how long it was closed (0 if it was open)."""
        if not self.closed:
            return 0.0
        self.closed = False
        self.tier.update_hold()
        if self._auto_resume is not None:
            self._auto_resume.cancel()
            self._auto_resume = None
        released = self._released
        self._released = None
        if released is not None and not released.done():
            released.set_result(None)
        paused = time.monotonic() - self.paused_at
        self.tier.stats.pauses.observe(paused)
        log.info("resumed after %.3fs of pause", paused)
        return paused

    def _expired(self) -> None:
        self._auto_resume = None
        running = self.tier.switchover
        if running is not None:
            # Resuming now could send writes to a primary being demoted; the switchover
            # bounds its own steps under pause.max_pause and resumes when it is done.
            log.warning(
                "pause exceeded pause.max_pause (%gs) during switchover %d; it resumes itself",
                self.config.max_pause,
                running.id,
            )
            return
        log.warning(
            "pause exceeded pause.max_pause (%gs): resuming by itself", self.config.max_pause
        )
        self.resume()
