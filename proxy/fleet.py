"""The fleet on etcd: who is in it, and one change of writer at a time.

Every tier with `fleet.etcd` registers itself at /sluice/<cluster>/members/<name> on a lease
of `fleet.lease_ttl`, refreshed three times per TTL, and reads the live members at the same
pace: a switchover pauses the live remote tiers found there, not a static list. A tier that
stops deregisters before it drains; one that crashes drops out when its lease expires.

A switchover (later: a failover) first takes /sluice/<cluster>/lock, created only if absent
(a transaction on its version, as Patroni and Vitess do) and held on a lease of its own that
its holder keeps alive; a second one is refused with the holder's name and purpose. A lease
outlives a holder that froze by up to its TTL, so the lock serialises changes of writer; it
does not fence a writer (that is the epoch's job).

etcd is never in the data path: while it is unreachable, tiers serve on, the member list
keeps its last reading (marked stale), registration comes back when etcd does, and only a
change of writer is refused, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aetcd

if TYPE_CHECKING:
    from .config import FleetConfig
    from .tier import Tier

log = logging.getLogger("sluice.fleet")

CALL_TIMEOUT = 2.0
"""Seconds for one etcd call: etcd answers in milliseconds, or it is not there."""


class FleetError(Exception):
    """A change of writer cannot go ahead: the lock is held, or etcd cannot be reached."""


@dataclass(frozen=True, slots=True)
class WriterRecord:
    """/sluice/<cluster>/primary: the server every tier sends writes to, and its epoch (one
    more at every change of writer). `revision` is the key's mod_revision, for the next
    compare-and-swap."""

    server: str
    epoch: int
    revision: int


def member_name(tier: Tier) -> str:
    """fleet.name, else this host's name and the tier's first listen address."""
    configured = tier.config.fleet.name if tier.config.fleet is not None else ""
    if configured:
        return configured
    first = tier.listen_addresses()[0] if tier.listen_addresses() else "unlistened"
    return f"{socket.gethostname()}-{first}".replace("/", "_").replace(":", "_")


class Fleet:
    """This tier's membership of its cluster in etcd, and the change-of-writer lock."""

    def __init__(self, tier: Tier, config: FleetConfig) -> None:
        self.tier = tier
        self.config = config
        self.prefix = f"/sluice/{config.cluster}/"
        self.name = member_name(tier)
        self.etcd = "connecting"  # "ok" or "unreachable: why" (/status fleet.etcd)
        self.members: list[dict[str, Any]] = []  # the last reading
        self.members_at = 0.0  # when it was read (monotonic)
        self._client: aetcd.Client | None = None
        self._endpoint = 0
        self._lease: Any = None
        self._task: asyncio.Task[None] | None = None
        self._registered = asyncio.Event()
        self.holding: str | None = None  # the change of writer this tier holds the lock for
        self.writer: WriterRecord | None = None  # the last reading of the writer record
        # A local tier without upstream.servers takes its remote tiers from the members.
        self._follows = tier.config.tier == "local" and not tier.config.upstream.servers

    # --- membership ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_membership())

    async def wait_registered(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._registered.wait()
        return self._registered.is_set()

    async def stop(self) -> None:
        """Deregister (before the tier drains: a switchover must not wait for it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None and self._lease is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CALL_TIMEOUT):
                    await self._client.delete(self._member_key(self.name))
                    await self._lease.revoke()
            log.info("left the fleet %s", self.config.cluster)
        await self._close()

    def _member_key(self, name: str) -> bytes:
        return f"{self.prefix}members/{name}".encode()

    def _record(self) -> bytes:
        admin = self.tier.admin_addresses()
        return json.dumps(
            {
                "name": self.name,
                "tier": self.tier.config.tier,
                "address": next(
                    (a for a in self.tier.listen_addresses() if not a.startswith("unix:")), None
                ),
                "admin": str(admin["http"]) if "http" in admin else None,
                "pool_max_connections": self.tier.config.pool.max_connections,
            }
        ).encode()

    async def _keep_membership(self) -> None:
        interval = self.config.lease_ttl / 3
        while True:
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    client = await self._connect()
                    if self._lease is None or await self._lease.remaining_ttl() <= 0:
                        self._lease = await client.lease(max(2, round(self.config.lease_ttl)))
                        await client.put(self._member_key(self.name), self._record(), self._lease)
                        log.info("joined the fleet %s as %s", self.config.cluster, self.name)
                    else:
                        await self._lease.refresh()
                    names = await self.read_members()
                    await self.read_writer()
                if self._follows:
                    self.tier.follow_fleet(self.members)
                if self.name not in names:
                    self._lease = None  # our key went (a lease expired while etcd was away)
                    continue
                if self.etcd != "ok":
                    if self.etcd.startswith("unreachable"):
                        log.info("etcd reachable again")
                    self.etcd = "ok"
                self._registered.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                problem = f"unreachable: {_why(exc)}"
                if problem != self.etcd:
                    log.warning("etcd %s (%s); serving on", problem, self._endpoint_text())
                self.etcd = problem
                self._lease = None
                self._next_endpoint()
            await asyncio.sleep(interval)

    async def read_members(self) -> set[str]:
        """Read the live members now (a switchover does, once it holds the lock)."""
        client = await self._connect()
        async with asyncio.timeout(CALL_TIMEOUT):
            found = await client.get_prefix(f"{self.prefix}members/".encode())
        self.members = sorted((json.loads(kv.value) for kv in found), key=lambda m: m["name"])
        self.members_at = time.monotonic()
        return {m["name"] for m in self.members}

    def live(self, tier: str | None = None) -> list[dict[str, Any]]:
        """Members of the last reading (of one tier kind), this one included."""
        return [m for m in self.members if tier is None or m["tier"] == tier]

    def status(self) -> dict[str, Any]:
        age = time.monotonic() - self.members_at if self.members_at else None
        remotes = self.live("remote")
        return {
            # The database sees at most this many connections from the fleet's remote tiers
            # (each has its own pool.max_connections, per server).
            "remote_connections_cap": sum(m.get("pool_max_connections") or 0 for m in remotes),
            "etcd": self.etcd,
            "cluster": self.config.cluster,
            "name": self.name,
            "members": self.members,
            "members_read_ago": None if age is None else round(age, 1),
            "holding_lock": self.holding,
            "primary": self.writer.server if self.writer is not None else None,
            "epoch": self.writer.epoch if self.writer is not None else None,
        }

    # --- one change of writer at a time -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, purpose: str) -> AsyncIterator[None]:
        """Hold the fleet's change-of-writer lock for the body, or raise FleetError."""
        key = f"{self.prefix}lock".encode()
        holder = json.dumps(
            {"holder": self.name, "purpose": purpose, "since": time.strftime("%H:%M:%S")}
        ).encode()
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                client = await self._connect()
                lease = await client.lease(max(2, round(self.config.lease_ttl)))
                ok, answers = await client.transaction(
                    compare=[client.transactions.version(key) == 0],
                    success=[client.transactions.put(key, holder, lease)],
                    failure=[client.transactions.get(key)],
                )
        except Exception as exc:
            raise FleetError(
                f"etcd is unreachable ({_why(exc)}): a change of writer needs the fleet's "
                "lock; retry when etcd answers"
            ) from exc
        if not ok:
            with contextlib.suppress(Exception):
                await lease.revoke()
            raise FleetError(f"another change of writer is under way: {_holder(answers)}")
        keeper = asyncio.get_running_loop().create_task(self._keep_lease(lease))
        self.holding = purpose
        try:
            yield
        finally:
            self.holding = None
            keeper.cancel()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CALL_TIMEOUT):
                    await client.transaction(
                        compare=[client.transactions.value(key) == holder],
                        success=[client.transactions.delete(key)],
                        failure=[],
                    )
                    await lease.revoke()

    async def _keep_lease(self, lease: Any) -> None:
        while True:
            await asyncio.sleep(self.config.lease_ttl / 3)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CALL_TIMEOUT):
                    await lease.refresh()

    # --- the writer and its epoch -------------------------------------------------------------

    @property
    def _writer_key(self) -> bytes:
        return f"{self.prefix}primary".encode()

    async def read_writer(self) -> WriterRecord | None:
        """The writer record now (None: none yet); FleetError when etcd does not answer."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                client = await self._connect()
                got = await client.get(self._writer_key)
        except Exception as exc:
            raise FleetError(f"etcd is unreachable ({_why(exc)})") from exc
        self.writer = None if got is None else _writer(got.value, got.mod_revision)
        return self.writer

    async def first_writer(self, server: str) -> WriterRecord:
        """Record `server` as the writer at epoch 1 if the fleet has no record yet (a new
        fleet); a record another tier wrote first wins. Returns the record that holds."""
        value = json.dumps({"server": server, "epoch": 1}).encode()
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                client = await self._connect()
                ok, _ = await client.transaction(
                    compare=[client.transactions.version(self._writer_key) == 0],
                    success=[client.transactions.put(self._writer_key, value)],
                    failure=[],
                )
        except Exception as exc:
            raise FleetError(f"etcd is unreachable ({_why(exc)})") from exc
        if ok:
            log.info("the fleet's writer is %s (epoch 1)", server)
        record = await self.read_writer()
        assert record is not None
        return record

    async def move_writer(self, server: str, expected: WriterRecord) -> WriterRecord:
        """Record `server` as the writer at the next epoch, only if the record is still
        `expected` (compare-and-swap on its revision)."""
        value = json.dumps({"server": server, "epoch": expected.epoch + 1}).encode()
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                client = await self._connect()
                ok, _ = await client.transaction(
                    compare=[client.transactions.mod(self._writer_key) == expected.revision],
                    success=[client.transactions.put(self._writer_key, value)],
                    failure=[],
                )
        except Exception as exc:
            raise FleetError(f"etcd is unreachable ({_why(exc)})") from exc
        record = await self.read_writer()
        if not ok or record is None:
            now = f"{record.server} at epoch {record.epoch}" if record else "no record"
            raise FleetError(f"the fleet's writer record changed meanwhile (now {now})")
        log.info("the fleet's writer is %s (epoch %d)", server, record.epoch)
        return record

    async def read_key(self, name: str) -> dict[str, Any] | None:
        """A JSON record of the fleet's (e.g. last_failover), or None."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                got = await (await self._connect()).get(f"{self.prefix}{name}".encode())
        except Exception as exc:
            raise FleetError(f"etcd is unreachable ({_why(exc)})") from exc
        return None if got is None else json.loads(got.value)

    async def write_key(self, name: str, value: dict[str, Any]) -> None:
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                client = await self._connect()
                await client.put(f"{self.prefix}{name}".encode(), json.dumps(value).encode())
        except Exception as exc:
            raise FleetError(f"etcd is unreachable ({_why(exc)})") from exc

    async def hand_over(self, source: str | None, target: str) -> WriterRecord:
        """Record `target` as the writer at the next epoch, from `source` (None: whoever the
        record names). A fleet without a record yet starts from `source` (or `target`) at
        epoch 1. The caller holds the fleet's lock."""
        record = await self.read_writer()
        if record is None:
            record = await self.first_writer(source or target)
        if source is not None and record.server != source:
            raise FleetError(
                f"the fleet's writer record names {record.server} (epoch {record.epoch}), "
                f"not {source}"
            )
        if record.server == target:
            return record
        return await self.move_writer(target, record)

    # --- the connection -----------------------------------------------------------------------

    def _endpoint_text(self) -> str:
        return str(self.config.etcd[self._endpoint % len(self.config.etcd)])

    async def _connect(self) -> aetcd.Client:
        if self._client is None:
            address = self.config.etcd[self._endpoint % len(self.config.etcd)]
            client = aetcd.Client(host=address.host, port=address.port, timeout=CALL_TIMEOUT)
            await client.connect()
            self._client = client
        return self._client

    def _next_endpoint(self) -> None:
        """Try the next endpoint from now on, if there are several. The old client is closed
        only once calls under way on it (a lock, say) have had their time: closing a gRPC
        channel cancels them. With one endpoint the client stays: its channel reconnects."""
        if len(self.config.etcd) < 2 or self._client is None:
            return
        old, self._client = self._client, None
        self._endpoint += 1
        loop = asyncio.get_running_loop()
        loop.call_later(2 * CALL_TIMEOUT, lambda: loop.create_task(_close_client(old)))

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


async def _close_client(client: aetcd.Client) -> None:
    with contextlib.suppress(Exception):
        await client.close()


def _writer(value: bytes, revision: int) -> WriterRecord:
    record = json.loads(value)
    return WriterRecord(str(record["server"]), int(record["epoch"]), revision)


def _holder(answers: Any) -> str:
    try:  # aetcd answers a get in a transaction as [[(value, metadata)]]
        record = json.loads(answers[0][0][0])
        return f"{record['holder']} holds the lock for {record['purpose']} since {record['since']}"
    except Exception:
        return "the lock is held"


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {CALL_TIMEOUT:g}s"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
