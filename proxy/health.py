"""Liveness of every upstream: TCP keepalive on every socket, and a health probe per server.

A peer can vanish without a reset (power loss, a partition) or hang while its kernel still
accepts connections (SIGSTOP, a stuck process). Linux gives up on such a socket after about
15 minutes; a proxy that waits that long becomes the incident. So every socket sluice opens or
accepts gets TCP keepalive, upstream sockets also TCP_USER_TIMEOUT (sent data that stays
unacknowledged ends the connection), and every upstream server is probed every
`upstream.health.interval`: a server that does not answer `failures` probes in a row, each
within `timeout`, is down. The tier decides what down means (route around a remote tier; buffer
while the writer is gone); this module only watches and reports.

The probe: on a remote tier, a COM_PING on a connection logged in with `upstream.monitor` (a
database counts connections closed before login against max_connect_errors, so probing by
connecting alone would lock sluice out); on a local tier, the remote tier's greeting (sluice
answers it itself), or a COM_PING with `upstream.monitor` when one is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import errors
from .backend import ServerConnection, UpstreamError
from .protocol.codec import ProtocolError

if TYPE_CHECKING:
    from .config import HealthConfig, KeepaliveConfig, ServerConfig
    from .tier import Tier

log = logging.getLogger("sluice.health")

UNKNOWN, OK, DOWN = "unknown", "ok", "down"


def set_keepalive(sock: object, config: KeepaliveConfig, user_timeout: bool) -> None:
    """TCP keepalive on a connected TCP socket (unix sockets have no such thing), and with
    `user_timeout` TCP_USER_TIMEOUT too: the idle and the busy kind of vanished peer (a peer
    that is slow but alive still acknowledges, so TCP_USER_TIMEOUT does not end it)."""
    if sock is None or getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # type: ignore[attr-defined]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, round(config.idle)))  # type: ignore[attr-defined]
        sock.setsockopt(  # type: ignore[attr-defined]
            socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, round(config.interval))
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, config.count)  # type: ignore[attr-defined]
        if user_timeout:
            sock.setsockopt(  # type: ignore[attr-defined]
                socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, round(config.bound * 1000)
            )
    except (OSError, AttributeError) as exc:  # not Linux, or not a TCP socket after all
        log.debug("could not set keepalive options: %s", exc)


@dataclass(slots=True)
class ServerHealth:
    """What the probes say about one upstream server."""

    name: str
    state: str = UNKNOWN
    failures: int = 0  # probes failed in a row
    problem: str | None = None  # why the last probe failed
    changed_at: float = 0.0  # wall clock of the last change between ok and down
    last_ok: float = 0.0  # monotonic time of the last answer
    seen: int = 0  # the latest probe (by start) whose result counted

    def describe(self) -> str:
        """For SHOW SERVERS and /status: ok, ok (back since …), down since … (why)."""
        if self.state == DOWN:
            return f"down since {_clock(self.changed_at)}: {self.problem}"
        if self.state == OK and self.changed_at and time.time() - self.changed_at < 600:
            return f"ok (back since {_clock(self.changed_at)})"
        return self.state


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


class MonitorChannel:
    """sluice's own connection to one server, logged in with `upstream.monitor`: the health
    probe's COM_PING and the KILL QUERY for a client that left take turns on it."""

    def __init__(self, tier: Tier, server: ServerConfig) -> None:
        self.tier = tier
        self.server = server
        self._conn: ServerConnection | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> ServerConnection:
        conn = self._conn
        if conn is None or conn.closed:
            from .discovery import monitor_connection

            monitor = self.tier.config.upstream.monitor
            assert monitor is not None
            conn = await monitor_connection(self.tier.upstream, self.server, monitor, "health")
            self._conn = conn
        return conn

    async def ping(self) -> None:
        async with self._lock:
            try:
                await (await self._connection()).ping()
            except BaseException:
                self.drop()
                raise

    async def query(self, sql: str) -> None:
        async with self._lock:
            try:
                await (await self._connection()).query(sql)
            except UpstreamError:
                raise  # the server answered: the connection is fine
            except BaseException:
                self.drop()
                raise

    def drop(self) -> None:
        if self._conn is not None:
            self._conn.abort()
            self._conn = None


class HealthMonitor:
    """One probe loop per upstream server; reports ok -> down and down -> ok to the tier."""

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self.servers: dict[str, ServerHealth] = {}
        self.channels: dict[str, MonitorChannel] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._watching: dict[str, asyncio.Task[None]] = {}

    @property
    def config(self) -> HealthConfig:
        return self.tier.config.upstream.health

    def start(self) -> None:
        for server in self.tier.upstream.servers:
            self.watch(server)

    def watch(self, server: ServerConfig) -> None:
        """Probe `server` from now on (at start, or a remote tier that joined the fleet)."""
        if server.name in self._watching:
            return
        self.servers[server.name] = ServerHealth(server.name)
        if self.tier.config.upstream.monitor is not None:
            self.channels[server.name] = MonitorChannel(self.tier, server)
        task = asyncio.get_running_loop().create_task(self._watch(server))
        self._watching[server.name] = task
        self._tasks.append(task)

    def unwatch(self, name: str) -> None:
        """`name` left the fleet: no more probes."""
        task = self._watching.pop(name, None)
        if task is not None:
            task.cancel()
            self._tasks.remove(task)
        self.servers.pop(name, None)
        channel = self.channels.pop(name, None)
        if channel is not None:
            channel.drop()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._watching.clear()
        for channel in self.channels.values():
            channel.drop()

    def is_down(self, name: str) -> bool:
        health = self.servers.get(name)
        return health is not None and health.state == DOWN

    async def _watch(self, server: ServerConfig) -> None:
        """A probe starts every interval, whether the last one has answered or not: a hung
        server then misses `failures` probes in about timeout + interval x (failures - 1)
        seconds, not failures x timeout. Results count in the order probes started."""
        health = self.servers[server.name]
        running: set[asyncio.Task[None]] = set()
        seq = 0
        try:
            while True:
                config = self.config
                if len(running) <= config.failures:  # a hung server: no pile-up of probes
                    seq += 1
                    task = asyncio.get_running_loop().create_task(
                        self._timed_probe(server, health, seq)
                    )
                    running.add(task)
                    task.add_done_callback(running.discard)
                await asyncio.sleep(config.interval)
        finally:
            for task in list(running):
                task.cancel()

    async def _timed_probe(self, server: ServerConfig, health: ServerHealth, seq: int) -> None:
        timeout = self.config.timeout
        try:
            async with asyncio.timeout(timeout):
                await self._probe(server)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if seq > health.seen:
                health.seen = seq
                self._failed(health, _why(exc, timeout))
        else:
            if seq > health.seen:
                health.seen = seq
                self._answered(health)

    async def _probe(self, server: ServerConfig) -> None:
        channel = self.channels.get(server.name)
        if channel is not None:
            await channel.ping()
            return
        # A local tier without a monitor account: a remote tier greets by itself.
        conn = await self.tier.upstream.open(server)
        try:
            await conn.read_message()
        finally:
            conn.abort()

    def _answered(self, health: ServerHealth) -> None:
        health.failures = 0
        health.last_ok = time.monotonic()
        health.problem = None
        if health.state == DOWN:
            health.state = OK
            health.changed_at = time.time()
            log.warning("upstream %s answers again", health.name)
            self.tier.server_up(health.name)
        elif health.state == UNKNOWN:
            health.state = OK

    def _failed(self, health: ServerHealth, why: str) -> None:
        health.failures += 1
        health.problem = why
        if health.state != DOWN and health.failures >= self.config.failures:
            health.state = DOWN
            health.changed_at = time.time()
            log.error(
                "upstream %s is down: %s (%d probes in a row); routing around it",
                health.name,
                why,
                health.failures,
            )
            self.tier.server_down(health.name, why)


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, errors.ClientError):
        return exc.message
    if isinstance(exc, UpstreamError | ProtocolError | OSError | ConnectionError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
