"""Failover buffering: while a remote tier has no writer, new work waits instead of failing.

When the writer is lost (connections refused or reset, the server answering read-only, or its
health probe failing), commands outside a transaction wait, as they do behind the write gate,
while the tier looks for the writer every few hundred milliseconds instead of every 5 s. They
run as soon as exactly one writer answers: the same server back, or a replica an orchestrator,
MaxScale or a person promoted. A transaction that lived on the lost writer cannot move and gets
1927, as before.

Bounds keep a long outage from piling up work (Vitess's vtgate buffer has the same shape): a
command waits at most `failover.buffer_window`; buffering itself ends after that window (new
commands then get a clear error at once, and the search goes on at a slower pace); at most
`failover.max_buffered` commands wait, beyond that they get an error at once. No flapping: a
server that comes back read-only, or two writable servers at once, do not end the buffering
(writer discovery accepts exactly one writable, non-replicating server).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ClientError
from .protocol.constants import ErrorCode

if TYPE_CHECKING:
    from .config import FailoverConfig
    from .tier import Tier

log = logging.getLogger("sluice.failover")

SEARCH_EVERY = 0.25
"""Seconds between writer checks while buffering."""
SEARCH_EVERY_AFTER_WINDOW = 1.0
HISTORY = 20


@dataclass(slots=True)
class FailoverRecord:
    """One episode without a writer, for /status and SHOW SERVERS."""

    started_at: float  # wall clock
    reason: str
    lost: str | None  # the writer that was lost
    ended_at: float | None = None
    writer: str | None = None  # the writer found (None: still looking, or gave up)
    buffered: int = 0  # commands that waited
    expired: int = 0  # commands that got an error after buffer_window or past max_buffered

    def as_dict(self) -> dict[str, object]:
        took = None if self.ended_at is None else round((self.ended_at - self.started_at), 3)
        return {
            "started_at": round(self.started_at, 3),
            "reason": self.reason,
            "lost": self.lost,
            "ended_at": None if self.ended_at is None else round(self.ended_at, 3),
            "seconds": took,
            "writer": self.writer,
            "buffered": self.buffered,
            "expired": self.expired,
        }


class Failover:
    """A remote tier's buffering while it has no writer (failover.mode: buffer)."""

    def __init__(self, tier: Tier, config: FailoverConfig) -> None:
        self.tier = tier
        self.config = config
        self.buffering = False
        self.waiting = 0
        self._since = 0.0  # monotonic start of the current episode
        self._found: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.current: FailoverRecord | None = None
        self.history: collections.deque[FailoverRecord] = collections.deque(maxlen=HISTORY)

    @property
    def enabled(self) -> bool:
        return self.config.mode != "off"

    def writer_lost(self, reason: str) -> bool:
        """The writer stopped answering (or answered read-only): start buffering, unless it
        is off or a planned switchover is moving the writer itself. True if buffering."""
        if not self.enabled or self.tier.switchover is not None:
            return False
        if self.buffering:
            return True
        loop = asyncio.get_running_loop()
        self.buffering = True
        self._since = time.monotonic()
        self._found = loop.create_future()
        current = self.tier.upstream.current
        self.current = FailoverRecord(time.time(), reason, current.name if current else None)
        self.tier.update_hold()
        log.warning(
            "writer lost (%s): new work waits up to %gs while sluice looks for a writer",
            reason,
            self.config.buffer_window,
        )
        self._task = loop.create_task(self._search())
        auto = self.tier.auto_failover
        if auto is not None:
            auto.start(self.current.lost)
        return True

    async def wait(self) -> None:
        """Wait for a writer (a command outside a transaction, while buffering)."""
        if not self.buffering:
            return
        found = self._found
        record = self.current
        if found is None:  # buffering outlasted its window: no more waiting
            if record is not None:
                record.expired += 1
            raise self._expired_error()
        if self.waiting >= self.config.max_buffered:
            if record is not None:
                record.expired += 1
            raise ClientError(
                ErrorCode.LOCK_WAIT_TIMEOUT,
                f"no writer ({record.reason if record else 'lost'}) and {self.waiting} "
                "commands are already waiting for one (failover.max_buffered); retry in a "
                "moment",
            )
        self.waiting += 1
        if record is not None:
            record.buffered += 1
        try:
            async with asyncio.timeout(self.config.buffer_window):
                await asyncio.shield(found)
        except TimeoutError:
            if record is not None:
                record.expired += 1
            raise self._expired_error() from None
        except ClientError:  # the window of the whole episode ended first
            if record is not None:
                record.expired += 1
            raise
        finally:
            self.waiting -= 1

    def _expired_error(self) -> ClientError:
        record = self.current
        why = record.reason if record is not None else "the writer was lost"
        return ClientError(
            ErrorCode.OPTION_PREVENTS_STATEMENT,
            f"no writer for {self.config.buffer_window:g}s (failover.buffer_window): {why}; "
            "sluice is still looking for one and follows it as soon as exactly one server is "
            "writable (promote a replica, or bring the primary back), then retry",
        )

    async def _search(self) -> None:
        """Ask the servers who the writer is until exactly one answers as such."""
        tier = self.tier
        timeout = tier.config.upstream.health.timeout
        while self.buffering:
            writer = None
            try:
                writer = await tier.check_writer(timeout=timeout)
            except Exception:
                log.exception("writer check during failover failed")
            if writer is not None and writer == tier.upstream.current:
                self._end(writer.name)
                return
            waited = time.monotonic() - self._since
            if waited > self.config.buffer_window and self._found is not None:
                # Buffering is over: waiting commands have had their window (new ones fail
                # at once); keep looking at a slower pace.
                self._release()
            await asyncio.sleep(
                SEARCH_EVERY if waited <= self.config.buffer_window else SEARCH_EVERY_AFTER_WINDOW
            )

    def _release(self) -> None:
        found = self._found
        self._found = None
        if found is not None and not found.done():
            found.set_exception(self._expired_error())
            found.exception()  # retrieved: waiters re-raise it themselves

    def _end(self, writer: str) -> None:
        record = self.current
        if record is not None:
            record.ended_at = time.time()
            record.writer = writer
            self.history.append(record)
            log.warning(
                "writer %s found after %.3fs of failover buffering (%d commands waited)",
                writer,
                record.ended_at - record.started_at,
                record.buffered,
            )
        self.current = None
        self.buffering = False
        found = self._found
        self._found = None
        if found is not None and not found.done():
            found.set_result(None)
        self.tier.update_hold()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.buffering = False
        self._release()
        with contextlib.suppress(Exception):
            self.tier.update_hold()

    def status(self) -> dict[str, object]:
        """The /status `failover` section."""
        last = self.history[-1] if self.history else None
        return {
            "mode": self.config.mode,
            "buffering": self.buffering,
            "buffered": self.waiting,
            "current": self.current.as_dict() if self.current is not None else None,
            "last": last.as_dict() if last is not None else None,
            "auto_last": self.tier.auto_failover.last if self.tier.auto_failover else None,
        }
