"""A running tier: listeners, client sessions, the upstream, start and graceful stop.

The tier is the one object that owns everything a `sluice run` process serves; the admin port,
metrics and the switchover machinery hang off it. Local and remote tiers are the same code: the
config's `tier` only says what kind of server the upstream is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import socket
import stat
from typing import TYPE_CHECKING

from .config import Address, Config
from .discovery import discover_writer
from .frontend import BUSY, INFILE, ClientSession
from .gate import Gate
from .pool import PoolManager
from .upstream import Upstream
from .users import UserDirectory

if TYPE_CHECKING:
    from .admin import AdminServers

log = logging.getLogger("sluice.tier")

LISTEN_BACKLOG = 4096
REDISCOVER_EVERY = 5.0
"""Seconds between writer discovery attempts while there is no clear writer."""
FIRST_SESSION_ID = 1_000_000_001
"""Client ids (the handshake's connection id) start far above the server thread ids a
client may see from CONNECTION_ID(), so KILL can tell the two apart."""


class Tier:
    """Everything one `sluice run` serves."""

    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path  # what the admin RELOAD command re-reads, if known
        self.users = UserDirectory(config.users)
        self.upstream = Upstream(config)
        self.pools = PoolManager(config.pool, config.upstream.servers)
        self.gate = Gate(self, config.pause)
        self.sessions: dict[int, ClientSession] = {}
        self.pins: dict[str, int] = {}  # pinned sessions so far, by reason
        self.auth_failures = 0
        self._janitor: asyncio.Task[None] | None = None
        self.accepting = False
        self._servers: list[asyncio.Server] = []
        self._next_id = FIRST_SESSION_ID - 1
        self._unix_paths: list[str] = []
        self.admin: AdminServers | None = None

    # --- sessions ---------------------------------------------------------------------------

    def next_session_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def admit(self, session: ClientSession) -> bool:
        """Register a new client, unless the tier is full or stopping."""
        if not self.accepting or len(self.sessions) >= self.config.limits.max_clients:
            return False
        self.sessions[session.id] = session
        return True

    def session_on_thread(self, thread_id: int) -> ClientSession | None:
        """The session holding the upstream connection with this server thread id."""
        for session in self.sessions.values():
            if session.backend is not None and session.backend.thread_id == thread_id:
                return session
        return None

    def forget(self, session: ClientSession) -> None:
        self.sessions.pop(session.id, None)

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        raise_nofile_limit()
        loop = asyncio.get_running_loop()
        self.accepting = True
        for address in self.config.listen:
            if address.kind == "unix":
                _remove_stale_socket(address.path)
                server = await loop.create_unix_server(
                    lambda: ClientSession(self), address.path, backlog=LISTEN_BACKLOG
                )
                os.chmod(address.path, 0o777)  # access is controlled by MySQL authentication
                self._unix_paths.append(address.path)
            else:
                server = await loop.create_server(
                    lambda: ClientSession(self),
                    address.host,
                    address.port,
                    backlog=LISTEN_BACKLOG,
                    reuse_address=True,
                )
            self._servers.append(server)
        self._janitor = loop.create_task(self._upkeep())
        log.info("%s tier listening on %s", self.config.tier, ", ".join(self.listen_addresses()))
        monitor = self.config.upstream.monitor
        if self.config.tier == "remote" and monitor is not None:
            await discover_writer(self.upstream, monitor)
        await self._start_admin()
        try:
            greeting = await self.upstream.server_greeting()
            log.info("upstream speaks %s", greeting.server_version)
        except Exception as exc:  # not fatal: clients get a clear error until it is reachable
            log.warning("upstream not reachable yet: %s", exc)

    async def _start_admin(self) -> None:
        """The admin SQL port and HTTP endpoints, when the config asks for them."""
        if self.config.admin.mysql is None and self.config.admin.http is None:
            return
        from .admin import AdminServers

        admin = AdminServers(self)
        await admin.start()
        self.admin = admin
        log.info("admin on %s", ", ".join(f"{k} {v}" for k, v in admin.addresses().items()))

    def admin_addresses(self) -> dict[str, str]:
        """Where the admin endpoints listen, by kind ("mysql", "http"); empty when off."""
        return self.admin.addresses() if self.admin is not None else {}

    async def _upkeep(self) -> None:
        """Periodic upkeep (PgBouncer's janitor): expire idle and too old connections, keep
        min_idle connections ready, look for a writer while there is no clear one."""
        rediscover_at = 0.0
        while True:
            await asyncio.sleep(1.0)
            try:
                self.pools.expire_idle()
                self.pools.top_up()
                now = asyncio.get_running_loop().time()
                monitor = self.config.upstream.monitor
                if self.upstream.current is None and monitor is not None and now >= rediscover_at:
                    rediscover_at = now + REDISCOVER_EVERY
                    await discover_writer(self.upstream, monitor)
            except Exception:
                log.exception("upkeep failed")

    def reload(self, config: Config) -> list[str]:
        """Apply a new config to the running tier; returns the sections that need a restart.

        Users, pool and limits apply at once (existing sessions keep their login); the
        listeners, the tier's role, its upstream servers and admin endpoints do not change
        under running clients, so differences there are reported and left as they were."""
        old = self.config
        restart = [
            name
            for name in ("tier", "listen", "upstream", "admin")
            if getattr(old, name) != getattr(config, name)
        ]
        self.config = dataclasses.replace(
            old,
            users=config.users,
            pool=config.pool,
            limits=config.limits,
            log=config.log,
            pause=config.pause,
        )
        self.gate.config = config.pause
        self.users = UserDirectory(config.users)
        self.pools.reconfigure(config.pool)
        logging.getLogger().setLevel(config.log.level.upper())
        if restart:
            log.warning(
                "config reloaded; %s changed and need a restart to apply", ", ".join(restart)
            )
        else:
            log.info("config reloaded")
        return restart

    def listen_addresses(self) -> list[str]:
        """Where the tier actually listens (ports resolved when the config said 0)."""
        out = []
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                if sock.family == socket.AF_UNIX:
                    out.append(f"unix:{name}")
                elif sock.family == socket.AF_INET6:
                    out.append(f"[{name[0]}]:{name[1]}")
                else:
                    out.append(f"{name[0]}:{name[1]}")
        return out

    def bound_address(self, index: int = 0) -> Address:
        text = self.listen_addresses()[index]
        if text.startswith("unix:"):
            return Address("unix", path=text[5:])
        host, _, port = text.rpartition(":")
        return Address("tcp", host=host.strip("[]"), port=int(port))

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting, let running commands finish (up to drain_timeout), close the rest."""
        self.accepting = False
        for server in self._servers:
            server.close()
        for session in list(self.sessions.values()):
            if session.state not in (BUSY, INFILE):
                session.close()
        deadline = asyncio.get_running_loop().time() + drain_timeout
        while self.sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            for session in list(self.sessions.values()):
                if session.state not in (BUSY, INFILE):
                    session.close()
        for session in list(self.sessions.values()):
            session.close()
        if self._janitor is not None:
            self._janitor.cancel()
        self.pools.close_all()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._servers.clear()
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        log.info("tier stopped")


def raise_nofile_limit() -> None:
    """Thousands of sockets need thousands of descriptors: take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a previous run, refusing if something still listens on it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"another process is listening on {path}")
