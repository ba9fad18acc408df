"""The upstream a tier serves: which server to use, what it looks like, how to log in to it.

A remote tier's upstream is a database; a local tier's is a remote tier. Either way it speaks
the MySQL protocol, so this module does not care which. Clients are greeted with the version
and capabilities of the real upstream (drivers read the version to choose features), so the
tier learns them from the upstream's own greeting before it greets anyone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from . import errors
from .backend import ServerConnection, UpstreamError, open_connection
from .protocol.codec import ProtocolError
from .protocol.constants import ErrorCode
from .protocol.handshake import Greeting
from .protocol.messages import parse_err
from .session_state import TRACKING_SETUP, SessionState
from .tls import client_context

if TYPE_CHECKING:
    from .config import Config, ServerConfig
    from .discovery import ServerRole
    from .pool import PoolKey
    from .users import Credential

log = logging.getLogger("sluice.upstream")

DOWN_FOR = 2.0
"""Seconds a local tier skips an upstream that refused a connection."""

POOL_ATTRIBUTES = {"program_name": "sluice", "_client_name": "sluice"}
"""Connect attributes of pooled connections (they serve many clients, so none of theirs)."""

LOGIN_VARIABLES = (
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
)
"""Variables a login sets from the handshake's charset rather than the server's globals."""


class Upstream:
    """The servers of `upstream.servers` and the one sluice currently sends work to."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # A local tier on a fleet without upstream.servers takes them from etcd (set_servers).
        self.servers: list[ServerConfig] = list(config.upstream.servers)
        self.names = {s.name for s in self.servers}
        # A remote tier with a monitor account replaces this by writer discovery at start;
        # None means there is no clear writer, and statements are refused meanwhile.
        self.current: ServerConfig | None = self.servers[0] if self.servers else None
        self.writer_problem: str | None = None
        self.roles: dict[str, str] = {}  # what writer discovery last saw, by server name
        self.probes: dict[str, ServerRole] = {}  # and in detail
        self.greeting: Greeting | None = None
        self._probe_lock = asyncio.Lock()
        self._down_until: dict[str, float] = {}
        self.down: set[str] = set()  # servers the health probes found down
        self.logging_in: dict[str, set[ServerConnection]] = {}  # logins under way, by server
        tls = config.upstream.tls
        self.tls_context = client_context(tls) if tls.mode != "disabled" else None
        self._turn = 0

    def set_servers(self, servers: list[ServerConfig]) -> None:
        """The remote tiers the fleet has now (a local tier following etcd)."""
        self.servers = list(servers)
        self.names = {s.name for s in servers}
        if self.current is None or self.current.name not in self.names:
            self.current = self.servers[0] if self.servers else None

    def server(self, name: str) -> ServerConfig:
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)

    def pick(self, exclude: frozenset[str] | set[str] = frozenset()) -> ServerConfig | None:
        """The server for a new session's work, or None when every candidate is excluded.

        A remote tier sends everything to its current database server. A local tier's
        upstreams are interchangeable remote tiers: sessions are spread over them in turn,
        skipping those that just refused a connection or that the health probes found down
        (unless all are)."""
        if self.config.tier != "local":
            current = self.current
            return None if current is None or current.name in exclude else current
        now = time.monotonic()
        servers = [s for s in self.servers if s.name not in exclude]
        up = [
            s
            for s in servers
            if self._down_until.get(s.name, 0.0) <= now and s.name not in self.down
        ] or servers
        if not up:
            return None
        self._turn += 1
        return up[self._turn % len(up)]

    def mark_down(self, name: str) -> None:
        """`name` refused a connection: route new work around it for a while."""
        if self._down_until.get(name, 0.0) <= time.monotonic():
            log.warning("upstream %s unreachable; routing around it for %gs", name, DOWN_FOR)
        self._down_until[name] = time.monotonic() + DOWN_FOR

    @property
    def connect_timeout(self) -> float:
        return self.config.upstream.connect_timeout

    async def server_greeting(self) -> Greeting:
        """The current upstream's greeting, read once (and refreshed by every login)."""
        if self.greeting is not None:
            return self.greeting
        async with self._probe_lock:
            if self.greeting is None:
                self.greeting = await self._probe()
        return self.greeting

    async def _probe(self) -> Greeting:
        if not self.servers:
            raise errors.upstream_unreachable(
                "(none)", "-", "no remote tier in the fleet yet (fleet.etcd)"
            )
        server = self.current or self.servers[0]  # versions agree across a cluster
        conn = await self.open(server)
        try:
            msg = await asyncio.wait_for(conn.read_message(), self.connect_timeout)
            if msg.payload[:1] == b"\xff":
                raise UpstreamError(parse_err(msg.payload), msg.payload)
            return Greeting.parse(msg.payload)
        except (TimeoutError, ConnectionError, ProtocolError) as exc:
            raise errors.upstream_unreachable(
                server.name, str(server.address), _reason(exc)
            ) from exc
        finally:
            conn.abort()

    async def open(self, server: ServerConfig) -> ServerConnection:
        """A transport to `server` (not logged in), with keepalive and TCP_USER_TIMEOUT."""
        try:
            return await open_connection(
                server.name,
                server.address,
                self.connect_timeout,
                keepalive=self.config.upstream.keepalive,
            )
        except (OSError, TimeoutError) as exc:
            raise errors.upstream_unreachable(
                server.name, str(server.address), _reason(exc)
            ) from exc

    async def connect(
        self,
        credential: Credential,
        client_capabilities: int,
        *,
        database: str | None,
        charset: int,
        max_packet: int,
        attributes: dict[str, str],
        server: ServerConfig | None = None,
    ) -> ServerConnection:
        """A logged-in connection to `server` (default: the current upstream), or
        errors.ClientError / UpstreamError.

        UpstreamError carries the server's own ERR (e.g. unknown database) for the client;
        a refused login becomes a sluice error that says the two user lists disagree.
        """
        server = server or self.current
        if server is None:
            raise errors.no_writer(self.writer_problem or "no writer is known")
        conn = await self.open(server)
        logging_in = self.logging_in.setdefault(server.name, set())
        logging_in.add(conn)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await conn.login(
                    credential,
                    client_capabilities,
                    database=database,
                    charset=charset,
                    max_packet=max_packet,
                    attributes=attributes,
                    tls=self.tls_context,
                    tls_mode=self.config.upstream.tls.mode,
                    server_hostname=server.address.host or None,
                )
        except UpstreamError as exc:
            conn.abort()
            if exc.err.code == ErrorCode.ACCESS_DENIED:
                raise errors.upstream_refused(
                    server.name, credential.user, exc.err.message
                ) from exc
            raise
        except (TimeoutError, ConnectionError, ProtocolError) as exc:
            conn.abort()
            raise errors.upstream_unreachable(
                server.name, str(server.address), _reason(exc)
            ) from exc
        except BaseException:
            conn.abort()
            raise
        finally:
            logging_in.discard(conn)
        self.greeting = conn.greeting
        return conn

    def abort_logins(self, name: str) -> None:
        """`name` stopped answering: logins waiting on it give up now, not at their
        connect_timeout (their sessions move on to another server)."""
        for conn in list(self.logging_in.get(name, ())):
            conn.lost_reason = f"{name} stopped answering"
            conn.abort()

    async def open_pooled(
        self,
        credential: Credential,
        key: PoolKey,
        *,
        client_capabilities: int,
        database: str | None,
        max_packet: int,
        baselines: dict[PoolKey, dict[str, str]],
    ) -> ServerConnection:
        """A new connection for a pool: logged in, reporting session state changes."""
        server = self.server(key.server)
        conn = await self.connect(
            credential,
            client_capabilities,
            database=database,
            charset=key.charset,
            max_packet=max_packet,
            attributes=POOL_ATTRIBUTES,
            server=server,
        )
        try:
            async with asyncio.timeout(self.connect_timeout):
                await conn.query(TRACKING_SETUP)
                if key not in baselines:
                    result = await conn.query(
                        "SELECT " + ", ".join(f"@@{name}" for name in LOGIN_VARIABLES)
                    )
                    baselines[key] = {
                        name: value
                        for name, value in zip(LOGIN_VARIABLES, result.rows[0], strict=True)
                        if value is not None
                    }
        except (TimeoutError, ConnectionError, ProtocolError) as exc:
            conn.abort()
            raise errors.upstream_unreachable(server.name, conn.address, _reason(exc)) from exc
        except BaseException:
            conn.abort()
            raise
        conn.state = SessionState(database)
        return conn


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
