"""Automatic failover (failover.mode: auto): the fleet promotes a replica by itself.

When a remote tier loses its writer it buffers new work (failover.py) and starts this:
1. Confirm from this side: the writer does not answer a probe.
2. Confirm from the replicas' side, as MaxScale's verify_master_failure does: none of them
   still replicates from it (their IO threads lost it too). A partition between sluice and
   the primary alone must not cost a failover. The replicas are asked again for a while:
   they notice a dead primary at their own pace.
3. Take the fleet's change-of-writer lock. A second tier trying at once is refused and waits
   for the record instead. The record must still name the lost writer; otherwise another
   tier did it already.
4. Anti-flap: no failover within failover.min_interval of the last one.
5. Pick the replica with the most advanced GTID it received (Gtid_IO_Pos) and let it apply
   its relay log (MASTER_GTID_WAIT). Record it as the writer at the next epoch, promote it
   (STOP SLAVE, RESET SLAVE ALL, read_only OFF), and point the other replicas at it.
6. Every tier's writer check (every 250 ms while buffering) reads the record and resumes on it.

With lossless semi-sync (AFTER_SYNC) the promoted replica has every acknowledged write.
MariaDB only for now (GTID positions and MASTER_GTID_WAIT).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from .discovery import dialect_of, monitor_connection, run_statements
from .fleet import FleetError

if TYPE_CHECKING:
    from .config import ServerConfig
    from .tier import Tier

log = logging.getLogger("sluice.autofailover")

CONFIRM_EVERY = 0.25
"""Seconds between asking the replicas whether they still see the lost writer."""


def gtid_progress(position: str) -> int:
    """How far a MariaDB GTID position goes: the sum of its per-domain sequence numbers."""
    total = 0
    for part in position.replace(" ", "").split(","):
        if part.count("-") == 2:
            total += int(part.rsplit("-", 1)[1])
    return total


class AutoFailover:
    """At most one attempt at a time per tier; the fleet's lock makes it one per fleet."""

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self._task: asyncio.Task[None] | None = None
        self.last: dict[str, Any] | None = None  # the last attempt, for /status

    def start(self, lost: str | None) -> None:
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.get_running_loop().create_task(self._attempt(lost))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _attempt(self, lost: str | None) -> None:
        began = time.monotonic()
        try:
            outcome = await self._fail_over(lost)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("automatic failover failed")
            outcome = f"failed: {exc}"
        self.last = {
            "lost": lost,
            "outcome": outcome,
            "took_ms": round((time.monotonic() - began) * 1000),
            "at": time.time(),
        }
        log.warning("automatic failover from %s: %s", lost, outcome)

    async def _fail_over(self, lost_name: str | None) -> str:
        tier = self.tier
        fleet = tier.fleet
        if fleet is None or not tier.accepting:
            return "not attempted: the tier is stopping"
        if lost_name is None:
            record = await fleet.read_writer()
            if record is None:
                return "nothing to do: the fleet has no writer record"
            lost_name = record.server
        lost = tier.config.server(lost_name)
        if lost is None:
            return f"nothing to do: {lost_name} is not in upstream.servers"
        replicas = [s for s in tier.upstream.servers if s.name != lost_name]
        window = min(tier.config.failover.buffer_window / 2, 10.0)
        deadline = time.monotonic() + window
        while True:
            if await self._answers(lost):
                return f"not needed: {lost_name} answers"
            seen = await asyncio.gather(*(self._replica(s) for s in replicas))
            usable = [(s, pos) for s, (still, pos) in zip(replicas, seen, strict=True) if pos]
            still = [s.name for s, (sees, _) in zip(replicas, seen, strict=True) if sees]
            if not still and usable:
                break
            if time.monotonic() > deadline:
                if still:
                    return (
                        f"refused: {', '.join(still)} still replicate from {lost_name} "
                        "(a partition between sluice and it?); not failing over"
                    )
                return "refused: no replica answers"
            await asyncio.sleep(CONFIRM_EVERY)
        try:
            async with fleet.lock(f"failover from {lost_name}"):
                return await self._promote_best(lost, usable)
        except FleetError as exc:
            return f"left to another tier: {exc}"

    async def _promote_best(self, lost: ServerConfig, usable: list[tuple[Any, str]]) -> str:
        tier = self.tier
        fleet = tier.fleet
        assert fleet is not None
        config = tier.config
        record = await fleet.read_writer()
        if record is None:  # (a fleet younger than its first writer check): we hold the lock
            record = await fleet.first_writer(lost.name)
        if record.server != lost.name:
            return f"done elsewhere: the fleet's writer is {record.server}"
        last = await fleet.read_key("last_failover")
        if last is not None and time.time() - float(last["at"]) < config.failover.min_interval:
            return (
                f"refused: the last automatic failover was {time.time() - last['at']:.0f}s ago "
                f"(failover.min_interval {config.failover.min_interval:g}s)"
            )
        candidate, position = max(usable, key=lambda item: gtid_progress(item[1]))
        monitor = config.upstream.monitor
        repl = config.upstream.replication
        assert monitor is not None and repl is not None and candidate.address.kind == "tcp"
        timeout = config.switchover.promote_timeout
        async with asyncio.timeout(timeout + 5):
            conn = await monitor_connection(tier.upstream, candidate, monitor, "failover")
        try:
            dialect = dialect_of(conn)
            if dialect.name != "mariadb":
                return f"refused: automatic failover speaks MariaDB only, {candidate.name} is not"
            async with asyncio.timeout(timeout + 5):
                answer = await conn.query(dialect.wait_for_position(position, timeout))
            if not dialect.reached(answer.rows[0][0] if answer.rows else None):
                return f"refused: {candidate.name} did not apply its relay log within {timeout:g}s"
            moved = await fleet.hand_over(lost.name, candidate.name)
            # Semi-sync follows the writer: what the dead primary had at its last probe.
            probe = tier.upstream.probes.get(lost.name)
            semi_sync = (probe.semi_sync if probe is not None else None) or {}
            async with asyncio.timeout(timeout + 5):
                for statement in (
                    dialect.stop_replication,
                    dialect.reset_replication,
                    *dialect.read_only_off(),
                    *dialect.semi_sync_primary(semi_sync),
                ):
                    await conn.query(statement)
        finally:
            conn.close()
        await fleet.write_key(
            "last_failover",
            {"at": time.time(), "from": lost.name, "to": candidate.name, "epoch": moved.epoch},
        )
        repointed = []
        host, port = candidate.address.host, candidate.address.port
        for other, _ in usable:
            if other == candidate:
                continue
            try:
                await run_statements(
                    tier.upstream,
                    other,
                    monitor,
                    "failover",
                    lambda d: [
                        d.stop_replication,
                        *d.follow(host, port, repl.user, repl.password, demote=False),
                        *d.semi_sync_replica(semi_sync, was_primary=False),
                        d.start_replication,
                    ],
                    timeout + 5,
                )
                repointed.append(other.name)
            except Exception as exc:
                log.warning("%s does not follow %s yet: %s", other.name, candidate.name, exc)
        follows = f"; {', '.join(repointed)} replicate from it" if repointed else ""
        return (
            f"promoted {candidate.name} (received up to {position}) at epoch {moved.epoch}{follows}"
        )

    async def _answers(self, server: ServerConfig) -> bool:
        monitor = self.tier.config.upstream.monitor
        assert monitor is not None
        try:
            async with asyncio.timeout(self.tier.config.upstream.health.timeout):
                conn = await monitor_connection(self.tier.upstream, server, monitor, "failover")
                conn.close()
            return True
        except Exception:
            return False

    async def _replica(self, server: ServerConfig) -> tuple[bool, str]:
        """(still replicates from its primary, the GTID position it received; "" if
        unusable)."""
        monitor = self.tier.config.upstream.monitor
        assert monitor is not None
        try:
            async with asyncio.timeout(self.tier.config.upstream.health.timeout):
                conn = await monitor_connection(self.tier.upstream, server, monitor, "failover")
                try:
                    dialect = dialect_of(conn)
                    status = await conn.query(dialect.replica_status_query)
                finally:
                    conn.close()
        except Exception:
            return False, ""
        # Any channel still connected counts as seeing it: replicas may reach the primary at
        # another address than sluice does (a proxy, a NAT), so addresses prove nothing.
        sees = False
        position = ""
        for row in status.rows:
            values = dict(zip(status.columns, row, strict=False))
            sees = sees or values.get("Slave_IO_Running") == "Yes"
            if not values.get("Connection_name"):  # the default connection
                position = values.get("Gtid_IO_Pos") or ""
        return sees, position
