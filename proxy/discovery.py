"""Writer discovery: which configured server is the primary right now?

A remote tier must never send writes to a demoted server, so at start it asks every server
(with the `upstream.monitor` account) rather than trusting the order of the config: the writer
is the one server that is writable and not replicating. No such server, or more than one, is
"no clear writer": sluice then refuses statements with a clear error instead of guessing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import errors
from .backend import UpstreamError
from .protocol.auth import stage1
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


async def probe(upstream: Upstream, server: ServerConfig, monitor: Credentials) -> ServerRole:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            conn = await upstream.connect(
                Credential(monitor.user, stage1(monitor.password) if monitor.password else b""),
                0,
                database=None,
                charset=45,
                max_packet=1 << 24,
                attributes={"program_name": "sluice-discovery"},
                server=server,
            )
            try:
                read_only = (await conn.query("SELECT @@global.read_only")).rows[0][0]
                replicas = await conn.query("SHOW ALL SLAVES STATUS")
            finally:
                conn.close()
    except TimeoutError:
        return ServerRole(server, problem=f"no answer within {PROBE_TIMEOUT:g}s")
    except errors.ClientError as exc:
        return ServerRole(server, problem=exc.message)
    except (UpstreamError, ProtocolError, ConnectionError, OSError) as exc:
        return ServerRole(server, problem=str(exc))
    return ServerRole(
        server, read_only=read_only not in ("0", "OFF"), replicating=bool(replicas.rows)
    )


async def discover_writer(upstream: Upstream, monitor: Credentials) -> list[ServerRole]:
    """Ask every server at once; sets upstream.current (or None) and returns the answers."""
    roles = await asyncio.gather(*(probe(upstream, s, monitor) for s in upstream.servers))
    upstream.roles = {r.server.name: r.role for r in roles}
    writers = [r for r in roles if r.writer]
    if len(writers) == 1:
        upstream.current = writers[0].server
        upstream.writer_problem = None
        log.info("writer discovery: %s", "; ".join(r.describe() for r in roles))
    else:
        upstream.current = None
        upstream.writer_problem = (
            f"no clear writer among {', '.join(s.name for s in upstream.servers)} "
            f"({'; '.join(r.describe() for r in roles)})"
        )
        log.error(
            "writer discovery: %s; statements are refused until one is found",
            upstream.writer_problem,
        )
    return list(roles)
