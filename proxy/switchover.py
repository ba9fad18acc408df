"""Planned switchover: move the primary to a replica under load, without client errors.

The order is Vitess' PlannedReparentShard, kept short where clients wait:

1. preflight: the candidate is a configured replica of the current primary, replicating,
   not too far behind; the accounts and bounds allow the whole thing to finish in time.
2. catch up: the candidate reaches the primary's position while traffic still flows, so
   the pause below only has to wait for the last few writes.
3. pause every tier of the fleet (all or none): new work queues, open transactions drain.
4. demote: `read_only` on the old primary (a short lock_wait_timeout turns a write that
   is still running, from outside sluice, into a clean abort), and read its final position.
5. wait until the candidate has applied that position.
6. promote: stop and reset its replication, make it writable.
7. retarget every tier at the new primary, then resume them (always, even after a failure).
8. point the old primary and the other replicas at the new primary (after the resume: no
   client waits for it).

A failure before the promotion completes undoes what was done, in reverse, and resumes on the
old primary: nothing was lost (no write was acknowledged while read_only was on, and none is
acknowledged by the candidate until it is promoted). Every step is timed, logged and kept in
the record that SHOW SWITCHOVERS and /status show.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import ctl
from .backend import QueryResult, ServerConnection, UpstreamError
from .dialect import Dialect, DialectError
from .discovery import dialect_of, monitor_connection
from .errors import ClientError
from .fleet import FleetError
from .protocol.codec import ProtocolError

if TYPE_CHECKING:
    from .config import Credentials, ServerConfig
    from .tier import Tier

log = logging.getLogger("sluice.switchover")

REPLICATION_START_WAIT = 5.0
"""Seconds to wait for a repointed server's replication threads to report running."""
QUERY_MARGIN = 5.0
"""Extra seconds a query that waits server-side (MASTER_GTID_WAIT) may take to answer."""
PAUSE_MARGIN = 1.0
"""Seconds kept in hand under pause.max_pause for undoing and resuming."""
_ids = itertools.count(1)


class SwitchoverFailed(Exception):
    """The switchover stopped; the message says where, why and in what state it left things."""


@dataclass(slots=True)
class Step:
    name: str
    at_ms: float  # since the switchover started
    ms: float = 0.0
    ok: bool = True
    detail: str = ""


@dataclass(slots=True)
class Peer:
    """Another remote tier of the same cluster, driven over its admin HTTP address."""

    address: str
    token: str | None
    timeout: float
    tls: ssl.SSLContext | None = None  # admin.tls: peers are verified against its ca
    paused: bool = False

    async def call(self, path: str) -> dict:
        return await asyncio.to_thread(
            ctl.call, self.address, "POST", path, self.token, self.timeout, self.tls
        )


@dataclass(eq=False)
class Switchover:
    """One planned switchover on one tier (and its peers), and its record."""

    tier: Tier
    target: str
    peer_addresses: Sequence[str] = ()
    id: int = field(default_factory=lambda: next(_ids))
    started_at: float = field(default_factory=time.time)
    source: str | None = None
    outcome: str = "running"  # running | done | aborted | failed
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    pause_ms: float | None = None  # how long this tier's clients waited
    total_ms: float | None = None

    def __post_init__(self) -> None:
        self._t0 = time.monotonic()
        self._conns: dict[str, ServerConnection] = {}
        self._undo: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        self.epoch: int | None = None  # the fleet's writer epoch this switchover recorded
        self._semi_sync: dict[str, str] | None = None  # the old primary's, read at promotion
        self._dialect: Dialect | None = None
        self._peers: list[Peer] = []
        self._paused_once = False
        self._promoted = False

    # --- the record -------------------------------------------------------------------------

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            "from": self.source,
            "to": self.target,
            "outcome": self.outcome,
            "error": self.error,
            "warnings": list(self.warnings),
            "pause_ms": _round(self.pause_ms),
            "total_ms": _round(self.total_ms),
            "peers": [p.address for p in self._peers],
            "epoch": self.epoch,
            "steps": [
                {
                    "step": s.name,
                    "at_ms": _round(s.at_ms),
                    "ms": _round(s.ms),
                    "ok": s.ok,
                    "detail": s.detail,
                }
                for s in self.steps
            ],
        }

    def steps_summary(self) -> str:
        return ", ".join(f"{s.name} {s.ms:.0f}ms" + ("" if s.ok else " FAILED") for s in self.steps)

    @contextlib.asynccontextmanager
    async def _step(self, name: str) -> AsyncIterator[Step]:
        step = Step(name, (time.monotonic() - self._t0) * 1000)
        self.steps.append(step)
        started = time.monotonic()
        try:
            yield step
        except SwitchoverFailed as exc:
            step.ok = False
            step.detail = step.detail or str(exc)
            raise
        except Exception as exc:  # a server or peer failed us: say which step and why
            step.ok = False
            step.detail = _why(exc)
            raise SwitchoverFailed(f"{name} failed: {step.detail}") from exc
        except BaseException:  # cancelled (shutdown) or out of its time budget
            step.ok = False
            step.detail = step.detail or "interrupted"
            raise
        finally:
            step.ms = (time.monotonic() - started) * 1000
            log.info(
                "switchover %d: %s %s in %.1f ms%s",
                self.id,
                name,
                "done" if step.ok else "FAILED",
                step.ms,
                f": {step.detail}" if step.detail else "",
            )

    # --- running ----------------------------------------------------------------------------

    async def run(self) -> Switchover:
        """Run it to the end; the outcome is in the record (and SwitchoverFailed is raised
        when it did not complete)."""
        tier = self.tier
        if tier.switchover is not None:
            raise SwitchoverFailed(
                f"switchover {tier.switchover.id} (to {tier.switchover.target}) is still running; "
                "wait for it (SHOW SWITCHOVERS) and try again"
            )
        tier.switchover = self
        log.info("switchover %d: to %s requested", self.id, self.target)
        try:
            async with self._fleet_lock():
                await self._run()
            self.outcome = "done"
        except SwitchoverFailed as exc:
            if self._promoted:
                self.outcome = "failed"
                exc = SwitchoverFailed(f"{exc}; {self.target} was promoted and is the primary")
            elif self.outcome == "running":
                self.outcome = "aborted"
                still = f": {self.source} is still the primary" if self.source else ""
                resumed = " and traffic resumed" if self._paused_once else ""
                exc = SwitchoverFailed(f"{exc}; nothing was changed{still}{resumed}")
            self.error = str(exc)
            raise exc from None
        except Exception as exc:  # a bug: still recorded, still resumed by _run
            self.outcome = "failed"
            self.error = f"unexpected error: {_why(exc)}"
            log.exception("switchover %d failed", self.id)
            raise SwitchoverFailed(self.error) from exc
        except BaseException:  # cancelled: _run has resumed and undone what it could
            self.outcome = "failed"
            self.error = "interrupted (sluice is stopping?); check SHOW SERVERS"
            raise
        finally:
            for conn in self._conns.values():
                conn.close()
            self.total_ms = (time.monotonic() - self._t0) * 1000
            tier.switchover = None
            tier.switchovers.append(self)
            tier.stats.switchover_durations.observe(self.total_ms / 1000)
            tier.stats.switchovers[self.outcome] = tier.stats.switchovers.get(self.outcome, 0) + 1
            log.info(
                "switchover %d: %s in %.0f ms (clients paused %s ms)%s",
                self.id,
                self.outcome,
                self.total_ms,
                _round(self.pause_ms),
                f": {self.error}" if self.error else "",
            )
        return self

    async def _run(self) -> None:
        source, target = await self._preflight()
        await self._catch_up(source, target)
        try:
            await self._pause_fleet()
            try:
                # Everything clients wait for must end before the gate's own max_pause would
                # resume them on a read-only primary: past this budget, undo and resume.
                paused_for = time.monotonic() - self.tier.gate.paused_at
                budget = self.tier.config.pause.max_pause - paused_for - PAUSE_MARGIN
                try:
                    async with asyncio.timeout(budget):
                        position = await self._demote(source)
                        await self._wait_for(target, position)
                        await self._record_writer(source, target)
                        await self._promote(source, target)
                except TimeoutError as exc:
                    raise SwitchoverFailed(
                        f"the steps under pause took longer than pause.max_pause allows "
                        f"({budget:.1f}s left after the drain)"
                    ) from exc
            except BaseException as exc:
                await self._undo_all(exc)
                raise
            async with self._step("retarget") as step:
                self.tier.retarget(target)
                step.detail = f"this tier sends new work to {target.name}; peers follow"
        finally:
            await self._resume_fleet(target if self._promoted else None)
        await self._repoint(source, target)

    # --- the steps --------------------------------------------------------------------------

    async def _preflight(self) -> tuple[ServerConfig, ServerConfig]:
        tier = self.tier
        config = tier.config
        async with self._step("preflight") as step:
            if config.tier != "remote":
                raise SwitchoverFailed(
                    "a local tier does not switch over (its upstreams are remote tiers); send "
                    "SWITCHOVER to a remote tier"
                )
            monitor = config.upstream.monitor
            if monitor is None or config.upstream.replication is None:
                raise SwitchoverFailed(
                    "switchover needs upstream.monitor (to run it) and upstream.replication "
                    "(for the servers that follow the new primary) in the config"
                )
            target = config.server(self.target)
            if target is None:
                names = ", ".join(s.name for s in config.upstream.servers)
                raise SwitchoverFailed(f"no server named '{self.target}'; the servers are {names}")
            source = tier.upstream.current
            if source is None:
                raise SwitchoverFailed(
                    f"no current primary is known ({tier.upstream.writer_problem}); fix that first"
                )
            self.source = source.name
            if source == target:
                raise SwitchoverFailed(f"{target.name} is already the primary")
            if tier.gate.closed:
                raise SwitchoverFailed("this tier is paused; RESUME it first")
            for server in (source, target):
                if server.address.kind != "tcp":
                    raise SwitchoverFailed(
                        f"{server.name} is configured at {server.address}; replication needs "
                        "a TCP address (host:port) that the other servers can reach"
                    )
            pause = config.pause
            window = pause.drain_timeout + config.switchover.lock_wait_timeout
            window += config.switchover.promote_timeout
            if window >= pause.max_pause:
                raise SwitchoverFailed(
                    f"pause.max_pause ({pause.max_pause:g}s) must exceed pause.drain_timeout + "
                    "switchover.lock_wait_timeout + switchover.promote_timeout "
                    f"({window:g}s), or a slow switchover would resume on a read-only primary"
                )
            self._peers = self._make_peers()
            src = await self._connect(source, monitor)
            tgt = await self._connect(target, monitor)
            self._dialect = dialect = dialect_of(src)
            await self._semi_sync_of(source)  # (before the pause: read, not changed)
            if dialect_of(tgt).name != dialect.name:
                raise SwitchoverFailed(
                    f"{source.name} and {target.name} are different kinds of server"
                )
            read_only = (await self._query(src, "SELECT @@GLOBAL.read_only")).rows[0][0]
            if dialect.is_read_only(read_only):
                raise SwitchoverFailed(
                    f"{source.name} is read-only already; is it still the primary?"
                )
            result = await self._query(tgt, dialect.replica_status_query)
            channels = dialect.parse_replica_status(result.columns, result.rows)
            if len(channels) != 1:
                raise SwitchoverFailed(
                    f"{target.name} has {len(channels)} replication channels; it must replicate "
                    f"from {source.name} only"
                )
            status = channels[0]
            if status.name:
                raise SwitchoverFailed(
                    f"{target.name} replicates over the named connection '{status.name}'; "
                    "sluice moves the default (unnamed) replication connection only"
                )
            if status.source_port != source.address.port:
                raise SwitchoverFailed(
                    f"{target.name} replicates from {status.source_host}:{status.source_port}, "
                    f"not from the primary {source.name} ({source.address})"
                )
            if status.source_host != source.address.host:
                self.warnings.append(
                    f"{target.name} names its source {status.source_host}, sluice names it "
                    f"{source.address.host}; assumed to be the same host"
                )
            if not status.healthy:
                raise SwitchoverFailed(
                    f"{target.name}'s replication is not running "
                    f"(IO {'yes' if status.io_running else 'no'}, "
                    f"SQL {'yes' if status.sql_running else 'no'}"
                    f"{', error: ' + status.error if status.error else ''}); fix it first"
                )
            max_lag = config.switchover.max_lag
            if status.lag is None or status.lag > max_lag:
                behind = "an unknown time" if status.lag is None else f"{status.lag:g}s"
                raise SwitchoverFailed(
                    f"{target.name} is {behind} behind {source.name} "
                    f"(switchover.max_lag is {max_lag:g}s); wait for it"
                )
            step.detail = (
                f"{source.name} -> {target.name} ({dialect.name} {_version(dialect)}), "
                f"lag {status.lag:g}s, {len(self._peers)} peer tiers"
            )
            return source, target

    async def _catch_up(self, source: ServerConfig, target: ServerConfig) -> None:
        """While traffic flows: the candidate reaches where the primary is now."""
        timeout = self.tier.config.switchover.catch_up_timeout
        async with self._step("catch_up") as step:
            position = await self._position(source)
            if not await self._reached(target, position, timeout):
                raise SwitchoverFailed(
                    f"{target.name} did not catch up with {source.name} within "
                    f"switchover.catch_up_timeout ({timeout:g}s; it must reach {position}); "
                    "retry when it keeps up, or raise the timeout"
                )
            step.detail = f"reached {position}"

    async def _pause_fleet(self) -> None:
        """Pause this tier and every peer, or none of them."""
        self._paused_once = True
        async with self._step("pause") as step:
            results = await asyncio.gather(
                self.tier.gate.pause(),
                *(peer.call("/pause") for peer in self._peers),
                return_exceptions=True,
            )
            problems = []
            for peer, result in zip(self._peers, results[1:], strict=True):
                if isinstance(result, BaseException):
                    problems.append(f"peer {peer.address} could not be paused: {_why(result)}")
                else:
                    peer.paused = True
            if isinstance(results[0], BaseException):
                problems.append(f"this tier could not be paused: {_why(results[0])}")
            if problems:  # _run resumes every tier
                raise SwitchoverFailed(
                    "; ".join(problems) + " (all or none: every tier was resumed)"
                )
            own = results[0]
            step.detail = (
                f"drained in {own.drained_seconds * 1000:.0f} ms, {own.killed} killed, "
                f"{self.tier.gate.queued} waiting"
            )

    async def _demote(self, source: ServerConfig) -> str:
        """read_only on the old primary; returns its final position."""
        assert self._dialect is not None
        switch = self.tier.config.switchover
        conn = self._conns[source.name]
        async with self._step("demote") as step:
            await self._query(conn, self._dialect.lock_wait_timeout(switch.lock_wait_timeout))
            # Registered first: a statement that timed out here may still have taken effect.
            self._on_undo(
                f"make {source.name} writable again", source, self._dialect.read_only_off()
            )
            for statement in self._dialect.read_only_on():
                await self._query(conn, statement, switch.lock_wait_timeout + QUERY_MARGIN)
            position = await self._position(source)
            step.detail = f"{source.name} read-only at {position}"
            return position

    async def _wait_for(self, target: ServerConfig, position: str) -> None:
        timeout = self.tier.config.switchover.promote_timeout
        async with self._step("wait_for_candidate") as step:
            if not await self._reached(target, position, timeout):
                raise SwitchoverFailed(
                    f"{target.name} did not apply {self.source}'s last writes within "
                    f"switchover.promote_timeout ({timeout:g}s)"
                )
            step.detail = f"{target.name} reached {position}"

    async def _record_writer(self, source: ServerConfig, target: ServerConfig) -> None:
        """With fleet.etcd: record the candidate as the writer at the next epoch before it is
        promoted, so no tier ever follows a writable server the record does not name (an
        undo records the old primary again, at a newer epoch still)."""
        fleet = self.tier.fleet
        if fleet is None:
            return
        async with self._step("record") as step:
            try:
                moved = await fleet.hand_over(source.name, target.name)
            except FleetError as exc:
                raise SwitchoverFailed(str(exc)) from None

            async def back() -> None:
                await fleet.move_writer(source.name, moved)

            self._undo.append((f"record {source.name} as the fleet's writer again", back))
            self.epoch = moved.epoch
            step.detail = f"{target.name} is the fleet's writer at epoch {moved.epoch}"

    async def _promote(self, source: ServerConfig, target: ServerConfig) -> None:
        assert self._dialect is not None
        dialect = self._dialect
        repl = self.tier.config.upstream.replication
        assert repl is not None and source.address.kind == "tcp"
        conn = self._conns[target.name]
        async with self._step("promote") as step:
            self._on_undo(
                f"restart replication on {target.name}", target, [dialect.start_replication]
            )
            await self._query(conn, dialect.stop_replication)
            follow = dialect.follow(
                source.address.host, source.address.port, repl.user, repl.password, demote=False
            )
            # Replication is stopped now, so CHANGE MASTER works whether or not the reset
            # below took effect.
            self._undo[-1] = (
                f"point {target.name} back at {source.name}",
                self._undo_action(target, [*follow, dialect.start_replication]),
            )
            await self._query(conn, dialect.reset_replication)
            for statement in dialect.read_only_off():
                await self._query(conn, statement)
            self._undo.clear()  # promoted: from here on the only way is forward
            self._promoted = True
            step.detail = f"{target.name} is writable and replicates from nobody"
            semi_sync = await self._semi_sync_of(source)
            try:  # semi-sync follows the writer (best effort: the switchover is done)
                for statement in dialect.semi_sync_primary(semi_sync):
                    await self._query(conn, statement)
                if dialect.semi_sync_primary(semi_sync):
                    step.detail += "; it waits for semi-sync replicas as the old primary did"
            except (ClientError, UpstreamError, ProtocolError, OSError, TimeoutError) as exc:
                self.warnings.append(f"semi-sync not set up on {target.name}: {_why(exc)}")

    async def _semi_sync_of(self, server: ServerConfig) -> dict[str, str]:
        """`server`'s rpl_semi_sync_* variables (what the new writer and replicas take on)."""
        if self._semi_sync is None:
            self._semi_sync = {}
            assert self._dialect is not None
            query = self._dialect.semi_sync_query
            conn = self._conns.get(server.name)
            if query is not None and conn is not None:
                try:
                    rows = (await self._query(conn, query)).rows
                    self._semi_sync = {str(name): str(value) for name, value in rows}
                except (ClientError, UpstreamError, ProtocolError, OSError, TimeoutError):
                    pass
        return self._semi_sync

    async def _resume_fleet(self, target: ServerConfig | None) -> None:
        """Resume every tier (all peers: one whose pause timed out may be paused anyway).
        With a new primary, peers take it in the same call, so none resumes on the old."""
        async with self._step("resume") as step:
            self.pause_ms = self.tier.gate.resume() * 1000
            path = "/resume" if target is None else f"/resume?to={target.name}"
            results = await asyncio.gather(
                *(peer.call(path) for peer in self._peers), return_exceptions=True
            )
            for peer, result in zip(self._peers, results, strict=True):
                if isinstance(result, BaseException) and (peer.paused or target is not None):
                    self.warnings.append(
                        f"peer {peer.address} did not resume"
                        + (f" on {target.name}" if target is not None else "")
                        + f" ({_why(result)}); it resumes by itself after its pause.max_pause "
                        "and its writer check finds the primary"
                    )
                peer.paused = False
            moved = f"; {1 + len(self._peers)} tiers on {target.name}" if target else ""
            step.detail = f"clients waited {self.pause_ms:.0f} ms here{moved}"

    async def _repoint(self, source: ServerConfig, target: ServerConfig) -> None:
        """The old primary and the other replicas follow the new primary (best effort: the
        switchover is done; what fails here is a warning for the operator)."""
        assert self._dialect is not None
        config = self.tier.config
        monitor, repl = config.upstream.monitor, config.upstream.replication
        assert monitor is not None and repl is not None and target.address.kind == "tcp"
        dialect = self._dialect
        async with self._step("repoint") as step:
            done = []
            for server in config.upstream.servers:
                if server == target:
                    continue
                demote = server == source
                try:
                    conn = self._conns.get(server.name) or await self._connect(server, monitor)
                    if not demote:
                        result = await self._query(conn, dialect.replica_status_query)
                        if not result.rows:
                            continue  # not a replica: not sluice's to change
                        await self._query(conn, dialect.stop_replication)
                    follow = dialect.follow(
                        target.address.host,
                        target.address.port,
                        repl.user,
                        repl.password,
                        demote=demote,
                    )
                    semi_sync = dialect.semi_sync_replica(self._semi_sync or {}, was_primary=demote)
                    for statement in [*follow, *semi_sync, dialect.start_replication]:
                        await self._query(conn, statement)
                    await self._replicating(conn, server)
                    done.append(server.name)
                except (SwitchoverFailed, ClientError, UpstreamError, ProtocolError) as exc:
                    self.warnings.append(
                        f"{server.name} does not follow {target.name} yet: {_why(exc)}; "
                        f"point it at {target.name} by hand"
                    )
                except (OSError, TimeoutError, DialectError) as exc:
                    self.warnings.append(
                        f"{server.name} does not follow {target.name} yet: {_why(exc)}; "
                        f"point it at {target.name} by hand"
                    )
            step.detail = f"{', '.join(done) or 'no server'} now replicate from {target.name}"

    # --- helpers ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _fleet_lock(self) -> AsyncIterator[None]:
        """With fleet.etcd: hold the fleet's change-of-writer lock throughout, and read the
        live members afresh once it is held (they are the peers)."""
        fleet = self.tier.fleet
        if fleet is None:
            yield
            return
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(
                    fleet.lock(f"switchover {self.id} to {self.target}")
                )
                await fleet.read_members()
            except FleetError as exc:
                raise SwitchoverFailed(str(exc)) from None
            yield

    def _make_peers(self) -> list[Peer]:
        config = self.tier.config
        own = {str(a) for a in self.tier.admin_addresses().values()}
        fleet = self.tier.fleet
        if fleet is not None:  # the live remote tiers in etcd, not a static list
            members = [m for m in fleet.live("remote") if m["name"] != fleet.name]
            unreachable = [m["name"] for m in members if not m["admin"]]
            if unreachable:
                raise SwitchoverFailed(
                    f"fleet members {', '.join(unreachable)} have no admin.http to be paused at"
                )
            wanted = [m["admin"] for m in members] + list(self.peer_addresses)
        else:
            wanted = [str(a) for a in config.switchover.peers] + list(self.peer_addresses)
        peers: list[Peer] = []
        tls = config.admin.tls
        context = None
        if tls is not None and tls.ca:
            # Peers are verified against admin.tls.ca. A fleet that requires client
            # certificates (client_cert: required) gets this tier's own, which must then be
            # good for client authentication too.
            mine = tls.client_cert == "required"
            context = ctl.client_context(tls.ca, tls.cert if mine else None, tls.key)
        for address in dict.fromkeys(wanted):
            if address not in own:
                peers.append(
                    Peer(address, config.admin.token, config.switchover.peer_timeout, context)
                )
        if peers and config.admin.token is None:
            raise SwitchoverFailed("peer tiers are driven with admin.token, which is not set")
        return peers

    async def _connect(self, server: ServerConfig, monitor: Credentials) -> ServerConnection:
        async with asyncio.timeout(self.tier.config.upstream.connect_timeout):
            conn = await monitor_connection(self.tier.upstream, server, monitor, "switchover")
        self._conns[server.name] = conn
        return conn

    async def _query(
        self, conn: ServerConnection, sql: str, timeout: float | None = None
    ) -> QueryResult:
        async with asyncio.timeout(timeout or self.tier.config.upstream.connect_timeout):
            return await conn.query(sql)

    async def _position(self, server: ServerConfig) -> str:
        assert self._dialect is not None
        result = await self._query(self._conns[server.name], self._dialect.position_query)
        return result.rows[0][0] or ""

    async def _reached(self, server: ServerConfig, position: str, timeout: float) -> bool:
        assert self._dialect is not None
        sql = self._dialect.wait_for_position(position, timeout)
        result = await self._query(self._conns[server.name], sql, timeout + QUERY_MARGIN)
        return self._dialect.reached(result.rows[0][0])

    async def _replicating(self, conn: ServerConnection, server: ServerConfig) -> None:
        assert self._dialect is not None
        deadline = time.monotonic() + REPLICATION_START_WAIT
        while True:
            result = await self._query(conn, self._dialect.replica_status_query)
            channels = self._dialect.parse_replica_status(result.columns, result.rows)
            if channels and channels[0].healthy:
                return
            if time.monotonic() >= deadline:
                why = channels[0].error if channels and channels[0].error else "not running"
                raise SwitchoverFailed(f"its replication did not start ({why})")
            await asyncio.sleep(0.1)

    def _on_undo(self, what: str, server: ServerConfig, statements: list[str]) -> None:
        self._undo.append((what, self._undo_action(server, statements)))

    def _undo_action(
        self, server: ServerConfig, statements: list[str]
    ) -> Callable[[], Awaitable[object]]:
        async def undo() -> None:
            # A fresh connection: the one that failed may be out of step with its replies.
            monitor = self.tier.config.upstream.monitor
            assert monitor is not None
            async with asyncio.timeout(self.tier.config.upstream.connect_timeout):
                conn = await monitor_connection(self.tier.upstream, server, monitor, "undo")
            try:
                for statement in statements:
                    await self._query(conn, statement)
            finally:
                conn.close()

        return undo

    async def _undo_all(self, cause: BaseException) -> None:
        """Take back what was done before the promotion, newest first."""
        if not self._undo:
            return
        async with self._step("undo") as step:
            failed = []
            done = []
            while self._undo:
                what, action = self._undo.pop()
                try:
                    await action()
                    done.append(what)
                except Exception as exc:
                    failed.append(f"could not {what}: {_why(exc)}")
            step.detail = "; ".join(done)
            if failed:
                self.outcome = "failed"
                step.ok = False
                step.detail = "; ".join(failed)
                raise SwitchoverFailed(
                    f"{_why(cause)}; and undoing it failed: {'; '.join(failed)}. Traffic was "
                    f"resumed on {self.source}; check SHOW SERVERS and fix by hand"
                ) from cause


def _why(exc: BaseException) -> str:
    if isinstance(exc, SwitchoverFailed):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, UpstreamError):
        return f"server said {exc.err.code}: {exc.err.message}"
    if isinstance(exc, ClientError):
        return exc.message.removeprefix("sluice: ")
    if isinstance(exc, ctl.ControlError):
        return str(exc)
    return str(exc) or type(exc).__name__


def _round(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 1)


def _version(dialect: Dialect) -> str:
    return ".".join(map(str, dialect.version))
