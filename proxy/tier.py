"""A running tier: listeners, client sessions, the upstream, start and graceful stop.

The tier is the one object that owns everything a `sluice run` process serves; the admin port,
metrics and the switchover machinery hang off it. Local and remote tiers are the same code: the
config's `tier` only says what kind of server the upstream is.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import resource
import socket
import ssl
import stat
import time
from typing import TYPE_CHECKING

from .autofailover import AutoFailover
from .backend import ServerConnection, UpstreamError
from .config import Address, Config, ConfigError, ServerConfig, parse_address
from .discovery import PROBE_TIMEOUT, Discovery, discover_writer, run_statements
from .failover import Failover
from .fleet import Fleet, FleetError, WriterRecord
from .frontend import BUSY, INFILE, ClientSession
from .gate import Gate
from .health import HealthMonitor
from .heartbeat import Heartbeat
from .pool import PoolManager
from .session_state import CharsetSets
from .stats import TierStats
from .tls import TLSConfigError, server_context
from .upstream import Upstream
from .users import FailureDelays, KnownLogins, UserDirectory

if TYPE_CHECKING:
    from .admin import AdminServers
    from .switchover import Switchover

log = logging.getLogger("sluice.tier")

LISTEN_BACKLOG = 4096
KILL_TIMEOUT = 3.0
"""Seconds for a KILL on behalf of a client that left."""
CHECK_WRITER_EVERY = 5.0
"""Seconds between writer checks: the primary may be moved by someone other than sluice."""
SWITCHOVER_HISTORY = 20
FIRST_SESSION_ID = 1_000_000_001
"""Client ids (the handshake's connection id) start far above the server thread ids a
client may see from CONNECTION_ID(), so KILL can tell the two apart."""


class Tier:
    """Everything one `sluice run` serves."""

    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.remote = config.tier == "remote"  # (a reload cannot change it)
        self.config_path = config_path  # what the admin RELOAD command re-reads, if known
        self.users = UserDirectory(config.users)
        self.upstream = Upstream(config)
        self.pools = PoolManager(config.pool, config.upstream.servers, user_shares(config))
        self.logins = KnownLogins()
        self.charset_sets = CharsetSets()  # what SET NAMES & co. do, learned from the upstream
        self.gate = Gate(self, config.pause)
        self.failover = Failover(self, config.failover)
        self.health: HealthMonitor | None = None
        self.hold_new_work = False  # the gate is closed or failover is buffering
        self._side_tasks: set[asyncio.Task[None]] = set()  # KILL for clients that left
        self.tls_context = build_tls_context(config)  # None: no TLS offered to clients
        self.failure_delays = FailureDelays(
            config.auth.failure_delay.after, config.auth.failure_delay.max
        )
        self._rsa: tuple[object, bytes] | None = None
        self.stats = TierStats()
        self.sessions: dict[int, ClientSession] = {}
        self.pins: dict[str, int] = {}  # pinned sessions so far, by reason
        self.auth_failures = 0
        self._janitor: asyncio.Task[None] | None = None
        self.accepting = False
        self._servers: list[asyncio.Server] = []
        self._next_id = FIRST_SESSION_ID - 1
        self._unix_paths: list[str] = []
        self.admin: AdminServers | None = None
        self.heartbeat: Heartbeat | None = None
        self.fleet: Fleet | None = None  # membership in etcd (fleet.etcd)
        self.fenced: dict[str, int] = {}  # servers fenced (writable, not the fleet's writer)
        self.auto_failover = AutoFailover(self) if config.failover.mode == "auto" else None
        self.writer_generation = 0  # counts retargets (see check_writer)
        self.switchover: Switchover | None = None  # the one running on this tier, if any
        self.switchovers: collections.deque[Switchover] = collections.deque(
            maxlen=SWITCHOVER_HISTORY
        )  # the last ones this tier ran, newest last

    # --- TLS and authentication --------------------------------------------------------------

    @property
    def tls_required(self) -> bool:
        """tls.mode required: plain TCP clients are refused (unix sockets count as secure)."""
        return self.config.tls is not None and self.config.tls.mode == "required"

    def rsa_key(self) -> tuple[object, bytes]:
        """(private key, public key PEM) for caching_sha2 full authentication without TLS:
        auth.rsa_key (created there if the file does not exist, so clients that pinned the
        public key keep working across restarts), else one generated for this process."""
        if self._rsa is None:
            self._rsa = load_or_create_rsa_key(self.config.auth.rsa_key)
        return self._rsa

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
        if self.config.tier == "remote" and self.config.upstream.monitor is not None:
            self.upstream.current = None  # found by asking the servers, never by config order
            await self.check_writer()
        if self.config.tier == "local" or self.config.upstream.monitor is not None:
            self.health = HealthMonitor(self)
            self.health.start()
        await self._start_admin()
        if self.config.fleet is not None:
            self.fleet = Fleet(self, self.config.fleet)
            self.fleet.start()
            if not await self.fleet.wait_registered(self.config.fleet.lease_ttl):
                log.warning("not registered in etcd yet (%s); serving on", self.fleet.etcd)
            elif self.config.tier == "remote" and self.config.upstream.monitor is not None:
                await self.check_writer()  # the fleet's writer record, now (or its first)
        if self.config.heartbeat is not None:
            self.heartbeat = Heartbeat(self, self.config.heartbeat)
            self.heartbeat.start()
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
        min_idle connections ready, check which server is the writer."""
        check_at = asyncio.get_running_loop().time() + CHECK_WRITER_EVERY
        while True:
            await asyncio.sleep(1.0)
            try:
                self.pools.expire_idle()
                self.pools.top_up()
                self._bound_sessions()
                now = asyncio.get_running_loop().time()
                if self.config.tier == "remote" and now >= check_at:
                    check_at = now + CHECK_WRITER_EVERY
                    await self.check_writer()
            except Exception:
                log.exception("upkeep failed")

    def _bound_sessions(self) -> None:
        """Once a second: clients' own wait_timeout, pool.idle_transaction_timeout and
        pool.max_transaction_time."""
        idle_limit = self.config.pool.idle_transaction_timeout
        time_limit = self.config.pool.max_transaction_time
        now = time.monotonic()
        for session in list(self.sessions.values()):
            session.upkeep(now, idle_limit, time_limit)

    # --- the writer -------------------------------------------------------------------------

    async def check_writer(self, timeout: float = PROBE_TIMEOUT) -> ServerConfig | None:
        """Ask the servers which one is the writer and follow the answer; returns the writer
        this round found (None: no clear writer, or the round did not count).

        A different clear writer is followed (someone moved the primary without sluice); a
        current writer that answered as read-only or replicating is dropped (statements then
        get a clear error rather than the server's 1290, or wait while failover buffers);
        one that did not answer is kept, since its pooled connections will report their own
        failures. Nothing changes while the gate is closed: a switchover moves the writer
        itself."""
        monitor = self.config.upstream.monitor
        if monitor is None or self.gate.closed or self.switchover is not None:
            return None
        before = (self.gate.generation, self.writer_generation)
        found = await discover_writer(self.upstream, monitor, timeout)
        if self.gate.closed or self.switchover is not None:
            return None
        if (self.gate.generation, self.writer_generation) != before:
            return None  # a pause or retarget happened meanwhile: the answers may be stale
        if self.fleet is not None:
            return await self._follow_the_fleets_writer(found)
        current = self.upstream.current
        writer = found.writer
        if writer is not None:
            if writer != current:
                if current is None:
                    log.info(
                        "writer discovery: %s is the primary (%s)", writer.name, found.describe()
                    )
                else:
                    log.warning(
                        "the primary moved from %s to %s without sluice (%s): following it",
                        current.name,
                        writer.name,
                        found.describe(),
                    )
                self.retarget(writer)
            return writer
        if current is not None and not found.demoted(current):
            return None
        problem = found.problem()
        if problem != self.upstream.writer_problem:
            waits = "wait" if self.failover.enabled else "are refused"
            log.error("writer discovery: %s; statements %s until one is found", problem, waits)
        self.retarget(None, problem)
        if current is not None:
            self.failover.writer_lost(f"{current.name} is no longer writable")
        return None

    async def _follow_the_fleets_writer(self, found: Discovery) -> ServerConfig | None:
        """With fleet.etcd the writer is the one etcd records, never a server that merely
        looks writable: any other server found writable (an old primary back from the dead,
        a replica promoted behind the fleet's back) is fenced: set read_only, reported
        `fenced`, sent no work. A new fleet records the writer discovery found (epoch 1).
        Without etcd the tier keeps its current writer and changes nothing."""
        assert self.fleet is not None
        current = self.upstream.current
        for name in list(self.fenced):  # fenced until it replicates from the writer again
            role = self.upstream.roles.get(name)
            if role == "replica":
                del self.fenced[name]
            elif role == "read_only":
                self.upstream.roles[name] = "fenced"
        try:
            record = await self.fleet.read_writer()
            if record is None and found.writer is not None:
                record = await self.fleet.first_writer(found.writer.name)
        except FleetError as exc:
            log.warning("writer check: %s; keeping %s", exc, current.name if current else "none")
            return current
        if record is None:  # no record and no clear writer: as without a fleet
            problem = found.problem()
            self.retarget(None, problem)
            return None
        writer = self.config.server(record.server)
        if writer is None:
            self.retarget(None, f"the fleet's writer {record.server!r} is not in upstream.servers")
            return None
        answer = next((r for r in found.roles if r.server == writer), None)
        if answer is None or answer.problem is not None:
            # The fleet's writer did not answer: keep what we have (its connections report
            # their own failures); failover buffering goes on looking. Another server found
            # writable now is not fenced (it gets no work either way): an orchestrator that
            # promoted it is about to RETARGET, and a fence would undo its promotion. Should
            # the recorded writer answer again first, the next check fences it.
            return None
        for role in found.roles:  # (read_only=OFF is enough: it accepts writes)
            if role.server != writer and role.problem is None and role.read_only is False:
                await self._fence(role.server, record)
        if writer != current and not found.demoted(writer):
            log.warning(
                "following the fleet's writer %s (epoch %d)%s",
                writer.name,
                record.epoch,
                f", not {current.name}" if current else "",
            )
            self.retarget(writer)
        if found.demoted(writer):
            problem = f"the fleet's writer {writer.name} (epoch {record.epoch}) is not writable"
            if problem != self.upstream.writer_problem:
                log.error("writer check: %s", problem)
            self.failover.writer_lost(problem)
            self.retarget(None, problem)
            return None
        return writer

    async def _fence(self, server: ServerConfig, record: WriterRecord) -> None:
        """`server` is writable but is not the fleet's writer: make it read-only."""
        monitor = self.config.upstream.monitor
        assert monitor is not None
        self.upstream.roles[server.name] = "fenced"
        self.fenced[server.name] = record.epoch
        log.warning(
            "%s is writable but the fleet's writer is %s (epoch %d): fencing it (read_only)",
            server.name,
            record.server,
            record.epoch,
        )
        try:
            await run_statements(
                self.upstream, server, monitor, "fence", lambda d: d.read_only_on(), PROBE_TIMEOUT
            )
        except Exception as exc:  # it gets no work either way; the next check tries again
            log.warning("could not set %s read_only: %s", server.name, exc)

    # --- health -----------------------------------------------------------------------------

    def update_hold(self) -> None:
        """New work waits while the gate is closed or failover buffers (one flag for the
        command path to read)."""
        self.hold_new_work = self.gate.closed or self.failover.buffering

    def server_is_down(self, name: str) -> bool:
        """Down by the health probes, or gone (a remote tier that left the fleet)."""
        return name in self.upstream.down or name not in self.upstream.names

    def follow_fleet(self, members: list[dict]) -> None:
        """A local tier without upstream.servers: its remote tiers are the fleet's live ones.
        One that joined gets new sessions at once; one that left gets none: its idle
        connections close, busy ones when their work ends, sessions move on."""
        wanted: dict[str, ServerConfig] = {}
        for member in members:
            if member.get("tier") != "remote" or not member.get("address"):
                continue
            try:
                address = parse_address(member["address"], "fleet member")
            except ConfigError:
                continue
            wanted[member["name"]] = ServerConfig(member["name"], address)
        have = {s.name: s for s in self.upstream.servers}
        if wanted == have:
            return
        for name, server in wanted.items():
            if have.get(name) != server:
                log.info(
                    "remote tier %s (%s) joined the fleet: sessions go to it", name, server.address
                )
                self.pools.add_server(server)
        self.upstream.set_servers(list(wanted.values()))
        joined = [n for n, server in wanted.items() if have.get(n) != server]
        for name in joined:
            if self.health is not None:
                self.health.watch(wanted[name])
        if joined:
            # Spread the sessions that hold nothing over all of them now, the new ones
            # included (a session's state replays on any remote tier).
            for session in list(self.sessions.values()):
                server = self.upstream.pick()
                if server is not None:
                    session.move_to(server.name)
        for name in have.keys() - wanted.keys():
            log.info("remote tier %s left the fleet: no new work goes to it", name)
            if self.health is not None:
                self.health.unwatch(name)
            self.upstream.down.discard(name)
            self.pools.retire(name)

    def server_down(self, name: str, why: str) -> None:
        """The health probes found `name` not answering: stop sending it work now.

        Commands running there get 1927 (their session goes on elsewhere unless it holds a
        transaction or pinned state there); idle connections to it close; on a local tier
        sessions move to the other remote tiers, on a remote tier a lost writer starts
        failover buffering."""
        self.upstream.down.add(name)
        self.upstream.abort_logins(name)
        current = self.upstream.current
        if self.config.tier == "remote":
            if current is None or current.name != name:
                return  # a replica: only reported
            self.failover.writer_lost(f"{name}: {why}")
        else:
            self.pools.retire(name)
        for session in list(self.sessions.values()):
            session.server_hung(name)
        if self.config.tier == "remote":
            self.pools.close_idle(name)

    # --- no work for clients that left ----------------------------------------------------

    def abandon(self, conn: ServerConnection) -> None:
        """A client left (or its work was ended) while `conn` ran its command: stop the
        command upstream too, then close the connection.

        A statement that runs on for a client that gave up is load nobody wants, and
        sustained dead work is how an overload turns metastable (ProxySQL kills it by
        default too). Closing the socket does not stop it: MariaDB notices only when it
        writes, and a command still unread in its socket (a stalled server) would run once
        it resumes. So a remote tier sends KILL (the connection: it is being discarded
        anyway, and a killed connection runs nothing more) from a side connection, and the
        connection's slot under the cap is given back only after that (the database counts
        it until it is gone). A local tier's upstream is a remote tier, which does this
        itself when it sees the connection close."""
        conn.abort()
        if self.config.tier != "remote" or not conn.thread_id:
            self.pools.discard(conn)
            return
        task = asyncio.get_running_loop().create_task(self._kill_then_discard(conn))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _kill_then_discard(self, conn: ServerConnection) -> None:
        try:
            await self.kill_upstream(conn)
        finally:
            self.pools.discard(conn)

    async def kill_upstream(self, conn: ServerConnection) -> None:
        """KILL `conn`'s server thread from another connection: the monitor account's, else
        an idle pooled connection of the same user (its own threads it may kill); without
        either its statement runs on, and the log says so."""
        sql = f"KILL {conn.thread_id}"
        try:
            async with asyncio.timeout(KILL_TIMEOUT):
                channel = self.health.channels.get(conn.server_name) if self.health else None
                if channel is not None:
                    await channel.query(sql)
                    return
                side = self.pools.take_idle(conn.pool_key, lambda _: True)
                if side is None:
                    log.info(
                        "no side connection to stop thread %s on %s (configure "
                        "upstream.monitor): it runs until it ends",
                        conn.thread_id,
                        conn.server_name,
                    )
                    return
                try:
                    await side.query(sql)
                except BaseException:
                    side.abort()
                    self.pools.discard(side)
                    raise
                self.pools.release(side)
        except UpstreamError as exc:
            if exc.err.code != 1094:  # 1094: it ended by itself meanwhile
                log.warning(
                    "could not stop thread %s on %s: %s", conn.thread_id, conn.server_name, exc.err
                )
        except Exception as exc:
            log.warning("could not stop thread %s on %s: %s", conn.thread_id, conn.server_name, exc)

    def server_up(self, name: str) -> None:
        self.upstream.down.discard(name)
        if self.config.tier == "local":
            self.pools.reinstate(name)

    def retarget(self, server: ServerConfig | None, problem: str | None = None) -> None:
        """Send new work to `server` from now on (None: refuse it, saying `problem`).

        Idle connections to the old writer close at once, busy ones as they come back; a
        session pinned to one loses its session (it cannot move) and is told why."""
        old = self.upstream.current
        self.writer_generation += 1
        self.upstream.current = server
        self.upstream.writer_problem = None if server is not None else problem
        if server is not None:
            self.pools.reinstate(server.name)
        if old is None or old == server:
            return
        self.pools.retire(old.name)
        for session in list(self.sessions.values()):
            session.leave_server(old.name)
        log.info("new work goes to %s (was %s)", server.name if server else "nobody", old.name)

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
        self.failure_delays = FailureDelays(
            config.auth.failure_delay.after, config.auth.failure_delay.max
        )
        try:  # certificate files are read again even when the config file did not change
            self.tls_context = build_tls_context(config)
        except TLSConfigError as exc:
            log.error("%s; keeping the certificates loaded before", exc)
        if self.admin is not None:
            self.admin.reload_certificates()
        self.pools.reconfigure(config.pool)
        self.pools.set_shares(user_shares(config))
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
        if self.fleet is not None:  # first: a switchover must not count on a leaving tier
            leaving = self.fleet
            await leaving.stop()
            self.fleet = None
            if self.config.tier == "remote":
                # Local tiers read the members three times per lease: give them that long
                # to stop sending new work here before idle sessions are closed.
                await asyncio.sleep(min(leaving.config.lease_ttl / 3 + 0.2, 3.0))
        if self.heartbeat is not None:
            await self.heartbeat.stop()
            self.heartbeat = None
        if self.health is not None:
            await self.health.stop()
            self.health = None
        self.failover.stop()
        if self.auto_failover is not None:
            self.auto_failover.stop()
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


def build_tls_context(config: Config) -> ssl.SSLContext | None:
    tls = config.tls
    if tls is None or tls.mode == "disabled":
        return None
    return server_context(tls)


def load_or_create_rsa_key(path: str | None) -> tuple[object, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = None
    if path is not None and os.path.exists(path):
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    if key is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if path is not None:
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            log.info("generated the RSA key for caching_sha2_password in %s", path)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public


def user_shares(config: Config) -> dict[str, int]:
    """users[].max_connections, by user name."""
    return {u.name: u.max_connections for u in config.users if u.max_connections is not None}


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
