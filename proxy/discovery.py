"""Writer discovery: which configured server is the primary right now?

A remote tier must never send writes to a demoted server, so at start it asks every server
(with the `upstream.monitor` account) rather than trusting the order of the config: the writer
is the one server that is writable and not replicating. No such server, or more than one, is
"no clear writer": sluice then refuses statements with a clear error instead of guessing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import errors
from .backend import ServerConnection, UpstreamError
from .dialect import Dialect, DialectError, for_version
from .protocol.codec import ProtocolError
from .users import Credential

if TYPE_CHECKING:
    from .config import Credentials, ServerConfig
    from .upstream import Upstream

log = logging.getLogger("sluice.discovery")

PROBE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class ServerRole:
    """What one server said about itself (or why it could not be asked)."""

    server: ServerConfig
    read_only: bool | None = None
    replicating: bool | None = None
    problem: str | None = None
    lag: float | None = None  # a replica's own Seconds_Behind_Master, when it reports one
    semi_sync: dict[str, str] | None = None  # its rpl_semi_sync_* variables (MariaDB)

    @property
    def writer(self) -> bool:
        return self.problem is None and self.read_only is False and self.replicating is False

    @property
    def role(self) -> str:
        """For SHOW SERVERS and /status: primary, replica, read_only or unreachable."""
        if self.problem is not None:
            return "unreachable"
        if self.writer:
            return "primary"
        return "replica" if self.replicating else "read_only"

    def describe(self) -> str:
        if self.problem is not None:
            return f"{self.server.name}: {self.problem}"
        if self.writer:
            return f"{self.server.name}: writable primary"
        what = [
            w
            for w, yes in (("read_only", self.read_only), ("replicating", self.replicating))
            if yes
        ]
        return f"{self.server.name}: {', '.join(what)}"


async def monitor_connection(
    upstream: Upstream, server: ServerConfig, monitor: Credentials, purpose: str
) -> ServerConnection:
    """A connection to a database server with the monitor account, for sluice's own SQL."""
    return await upstream.connect(
        Credential.of_password(monitor.user, monitor.password),
        0,
        database=None,
        charset=45,  # utf8mb4
        max_packet=1 << 24,
        attributes={"program_name": f"sluice-{purpose}"},
        server=server,
    )


async def run_statements(
    upstream: Upstream,
    server: ServerConfig,
    monitor: Credentials,
    purpose: str,
    statements: Callable[[Dialect], Sequence[str]],
    timeout: float,
) -> None:
    """Run sluice's own statements on `server` (built for its dialect) on a monitor
    connection of their own, within `timeout`; what fails raises."""
    async with asyncio.timeout(timeout):
        conn = await monitor_connection(upstream, server, monitor, purpose)
        try:
            for statement in statements(dialect_of(conn)):
                await conn.query(statement)
        finally:
            conn.close()


def dialect_of(conn: ServerConnection) -> Dialect:
    assert conn.greeting is not None
    return for_version(conn.greeting.server_version)


async def probe(
    upstream: Upstream, server: ServerConfig, monitor: Credentials, timeout: float = PROBE_TIMEOUT
) -> ServerRole:
    try:
        async with asyncio.timeout(timeout):
            conn = await monitor_connection(upstream, server, monitor, "discovery")
            try:
                dialect = dialect_of(conn)
                read_only = (await conn.query("SELECT @@GLOBAL.read_only")).rows[0][0]
                replicas = await conn.query(dialect.replica_status_query)
                semi_sync = None
                if dialect.semi_sync_query is not None:
                    rows = (await conn.query(dialect.semi_sync_query)).rows
                    semi_sync = {str(name): str(value) for name, value in rows}
            finally:
                conn.close()
    except TimeoutError:
        return ServerRole(server, problem=f"no answer within {timeout:g}s")
    except errors.ClientError as exc:
        return ServerRole(server, problem=exc.message)
    except (UpstreamError, ProtocolError, ConnectionError, OSError, DialectError) as exc:
        return ServerRole(server, problem=str(exc))
    channels = dialect.parse_replica_status(replicas.columns, replicas.rows)
    lags = [c.lag for c in channels if c.lag is not None]
    return ServerRole(
        server,
        read_only=dialect.is_read_only(read_only),
        replicating=bool(replicas.rows),
        lag=max(lags) if lags else None,
        semi_sync=semi_sync,
    )


@dataclass(frozen=True, slots=True)
class Discovery:
    """What one round of writer discovery found."""

    roles: list[ServerRole]

    @property
    def writer(self) -> ServerConfig | None:
        """The one writable server that does not replicate, if there is exactly one."""
        writers = [r.server for r in self.roles if r.writer]
        return writers[0] if len(writers) == 1 else None

    def demoted(self, server: ServerConfig) -> bool:
        """Whether `server` answered and is no longer a writer (unreachable is not proof)."""
        role = next((r for r in self.roles if r.server == server), None)
        return role is not None and role.problem is None and not role.writer

    def describe(self) -> str:
        return "; ".join(r.describe() for r in self.roles)

    def problem(self) -> str:
        names = ", ".join(r.server.name for r in self.roles)
        return f"no clear writer among {names} ({self.describe()})"


async def discover_writer(
    upstream: Upstream, monitor: Credentials, timeout: float = PROBE_TIMEOUT
) -> Discovery:
    """Ask every server at once (the tier decides what to do with the answers)."""
    roles = await asyncio.gather(*(probe(upstream, s, monitor, timeout) for s in upstream.servers))
    upstream.roles = {r.server.name: r.role for r in roles}
    upstream.probes = {r.server.name: r for r in roles}
    return Discovery(list(roles))
