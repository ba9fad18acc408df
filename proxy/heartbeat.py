"""The heartbeat: the customer's outcome, measured the way the customer gets it.

Every `heartbeat.interval` the tier writes one row through its own listener, as a client
would (on a local tier that is the whole path: local tier -> remote tier -> primary), and
counts successes, failures and how long the write took. A write pause shows as a latency
peak, an outage as failures: what alerts page on.

A tier with an `upstream.monitor` account (a remote tier) also reads the newest heartbeat on
every database server, and exports how old it is there: the replication lag as the data
sees it (pt-heartbeat's method), whichever tier wrote the row.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING

from .backend import ServerConnection, UpstreamError, open_connection
from .dialect import quote as _quote
from .discovery import monitor_connection
from .errors import ClientError
from .protocol.capabilities import AS_CLIENT
from .protocol.codec import ProtocolError
from .stats import LATENCY_BUCKETS, Histogram
from .users import Credential

if TYPE_CHECKING:
    from .config import HeartbeatConfig
    from .tier import Tier

log = logging.getLogger("sluice.heartbeat")

RECENT = 3600
"""Writes remembered one by one (an hour at the default interval)."""
WRITE_TIMEOUT = 30.0
"""A write that takes longer counts as failed (a pause is bounded well below this)."""


class Heartbeat:
    """The probe of one tier and what it measured."""

    def __init__(self, tier: Tier, config: HeartbeatConfig) -> None:
        self.tier = tier
        self.config = config
        self.id = config.id or f"{socket.gethostname()}/{tier.listen_addresses()[0]}"
        self.ok = 0
        self.failed = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.last_ok = 0.0  # wall clock of the last successful write
        self.last_error: str | None = None
        self.lag: dict[str, float | None] = {}  # by server: seconds, None when unknown
        # The last writes: (monotonic start, seconds or None when it failed), for reports.
        self.recent: collections.deque[tuple[float, float | None]] = collections.deque(
            maxlen=RECENT
        )
        self._conn: ServerConnection | None = None
        self._monitors: dict[str, ServerConnection] = {}
        self._table_ready = False
        self._task: asyncio.Task[None] | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "writes_ok": self.ok,
            "writes_failed": self.failed,
            "last_ok_age_s": round(time.time() - self.last_ok, 3) if self.last_ok else None,
            "last_error": self.last_error,
            "replication_lag_s": self.lag,
        }

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for conn in [self._conn, *self._monitors.values()]:
            if conn is not None:
                conn.close()

    async def _run(self) -> None:
        interval = self.config.interval
        next_at = time.monotonic()
        while True:
            next_at += interval
            await self._beat()
            if self.tier.config.upstream.monitor is not None:
                await self._read_lag()
            delay = next_at - time.monotonic()
            if delay < 0:  # a slow beat: skip the missed ones rather than bursting
                next_at = time.monotonic()
                delay = 0
            await asyncio.sleep(delay)

    # --- the write ------------------------------------------------------------------------

    async def _beat(self) -> None:
        began = time.monotonic()
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                conn = await self._connection()
                await conn.query(
                    f"INSERT INTO {self.config.table} (id, ts) VALUES ({_quote(self.id)}, "
                    "NOW(6)) ON DUPLICATE KEY UPDATE ts = VALUES(ts)"
                )
        except (OSError, TimeoutError, ProtocolError, UpstreamError, ClientError) as exc:
            self.failed += 1
            why = _why(exc)
            if why != self.last_error:
                log.warning("heartbeat write failed: %s", why)
            self.last_error = why
            if self._conn is not None:
                self._conn.abort()
                self._conn = None
            self.recent.append((began, None))
            return
        took = time.monotonic() - began
        self.latency.observe(took)
        self.recent.append((began, took))
        self.ok += 1
        self.last_ok = time.time()
        if self.last_error is not None:
            log.info("heartbeat writes succeed again")
            self.last_error = None

    async def _connection(self) -> ServerConnection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        address = self.tier.bound_address(0)
        timeout = self.tier.config.upstream.connect_timeout
        conn = await open_connection("heartbeat", address, timeout)
        try:
            password = self.config.password
            await conn.login(
                Credential.of_password(self.config.user, password),
                AS_CLIENT,
                database=self.config.table.split(".", 1)[0],
            )
            if not self._table_ready:
                await conn.query(
                    f"CREATE TABLE IF NOT EXISTS {self.config.table} "
                    "(id VARCHAR(255) PRIMARY KEY, ts DATETIME(6) NOT NULL)"
                )
                self._table_ready = True
        except BaseException:
            conn.abort()
            raise
        self._conn = conn
        return conn

    # --- the lag --------------------------------------------------------------------------

    async def _read_lag(self) -> None:
        monitor = self.tier.config.upstream.monitor
        assert monitor is not None
        upstream = self.tier.upstream
        for server in upstream.servers:
            try:
                async with asyncio.timeout(max(1.0, self.config.interval)):
                    conn = self._monitors.get(server.name)
                    if conn is None or conn.closed:
                        conn = await monitor_connection(upstream, server, monitor, "heartbeat")
                        self._monitors[server.name] = conn
                    result = await conn.query(
                        "SELECT TIMESTAMPDIFF(MICROSECOND, MAX(ts), NOW(6)) "
                        f"FROM {self.config.table}"
                    )
                age = result.rows[0][0]
                self.lag[server.name] = None if age is None else max(0.0, int(age) / 1e6)
            except (OSError, TimeoutError, ProtocolError, UpstreamError, ClientError):
                self.lag[server.name] = None
                stale = self._monitors.pop(server.name, None)
                if stale is not None:
                    stale.abort()


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {WRITE_TIMEOUT:g}s"
    if isinstance(exc, UpstreamError):
        return f"{exc.err.code}: {exc.err.message}"
    if isinstance(exc, ClientError):
        return exc.message
    return str(exc) or type(exc).__name__
