"""`sluice demo`: the story on one machine, with real parts, ending in a short report.

A sandbox MariaDB cluster starts with a small connection limit, one remote tier starts in front
of it, and several local tiers (one per pretend app host, on unix sockets) in front of that. A
crowd of app connections, far more than the database allows, writes and reads through the
local tiers for a few seconds; halfway through, the remote tier switches the primary over to
the replica (the same code as the admin command `SWITCHOVER TO 'db2'`). The report shows each
tier's connection counts as sampled while the load ran and the switchover's pause, and every
acknowledged write is read back from the final primary at the end, so "lost writes" is
measured, not assumed. The app clients speak the MySQL protocol with sluice's own client code
(no test-only drivers needed), over real sockets.

Act two is the unplanned part, on a fleet: the sandbox's etcd, two remote tiers registered
in it, a local tier that takes its remote tiers from etcd. Under load a third remote tier
joins and gets sessions, then the primary is killed with kill -9 and the fleet promotes the
replica by itself (failover.mode auto, semi-sync): the report shows the failover, the epoch
every tier follows, errors for commands issued after the kill (none) and lost writes (none).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import sandbox
from .admin import control
from .backend import ServerConnection, UpstreamError, open_connection
from .config import Address, Config, parse_config
from .protocol.capabilities import AS_CLIENT
from .switchover import Switchover
from .tier import Tier
from .users import Credential

DATABASE_LIMIT = 64
"""The sandbox database's max_connections: far below the app connections the demo opens."""
REMOTE_CAP = 48
LOCAL_POOL = 24


@dataclass
class Tally:
    queries: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)
    error_times: list[float] = field(default_factory=list)  # loop time each error came

    def error(self, text: str) -> None:
        self.errors[text] = self.errors.get(text, 0) + 1
        self.error_times.append(asyncio.get_running_loop().time())


@dataclass
class Peaks:
    """Connection counts sampled while the load runs."""

    database: int = 0  # the most any one database server had
    remote_to_db: int = 0
    local_to_remote: list[int] = field(default_factory=list)
    app_per_local: list[int] = field(default_factory=list)


async def app_client(
    n: int,
    address: Address,
    credential: Credential,
    until: float,
    tally: Tally,
    issued: dict[int, float] | None = None,
) -> None:
    """One app connection: insert a row, read it back, repeat until `until`."""
    try:
        conn = await open_connection("sluice", address, 30)
        await conn.login(credential, AS_CLIENT, database="sluice_demo")
    except (OSError, TimeoutError, UpstreamError, ConnectionError) as exc:
        tally.error(f"connect: {exc}")
        return
    i = 0
    loop = asyncio.get_running_loop()
    try:
        while loop.time() < until:
            i += 1
            key = n * 1_000_000 + i
            started = loop.time()
            if issued is not None:
                issued[key] = started
            try:
                await conn.query(
                    f"INSERT INTO events (id, client, payload) VALUES ({key}, {n}, REPEAT('x', 64))"
                )
                tally.acknowledged.append(key)
                await conn.query(f"SELECT id, payload FROM events WHERE id = {key}")
            except UpstreamError as exc:
                tally.error(f"query: {exc}")
                continue
            tally.latencies.append(loop.time() - started)
            tally.queries += 2
    except (ConnectionError, OSError) as exc:
        tally.error(f"connection: {exc}")
    finally:
        conn.close()


async def sample(
    monitors: list[ServerConnection],
    remote: Tier,
    local: list[Tier],
    peaks: Peaks,
    stop: asyncio.Event,
) -> None:
    """Peak connection counts of every tier and of the database while the load runs."""
    peaks.local_to_remote = [0] * len(local)
    peaks.app_per_local = [0] * len(local)
    while not stop.is_set():
        for monitor in monitors:
            result = await monitor.query("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
            peaks.database = max(peaks.database, int(result.rows[0][1] or 0))
        to_db = sum(slots.used for slots in remote.pools.servers.values())
        peaks.remote_to_db = max(peaks.remote_to_db, to_db)
        for i, tier in enumerate(local):
            peaks.local_to_remote[i] = max(
                peaks.local_to_remote[i], tier.pools.servers["remote1"].used
            )
            peaks.app_per_local[i] = max(peaks.app_per_local[i], len(tier.sessions))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def run_demo(
    clients: int = 1000, seconds: float = 5.0, workdir: str | None = None, hosts: int = 3
) -> int:
    own_dir = workdir is None
    base = Path(workdir or tempfile.mkdtemp(prefix="sluice-demo-", dir="/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"sluice demo: starting a sandbox MariaDB cluster in {base}")
    sb = await asyncio.to_thread(
        sandbox.up,
        base / "db",
        replicas=1,
        max_connections=DATABASE_LIMIT,
        semi_sync=True,  # lossless: the fleet's failover in act two loses no acknowledged write
        etcd=True,
    )
    try:
        return await _story(sb, clients, seconds, base, hosts)
    finally:
        await asyncio.to_thread(sandbox.down, base / "db")
        if own_dir:
            shutil.rmtree(base, ignore_errors=True)
        print("sluice demo: sandbox stopped")


def _config(
    tier: str,
    listen: list[str],
    servers: list[dict],
    cap: int,
    sb,
    heartbeat: bool = False,
    fleet: str | None = None,
) -> Config:
    app = sb.users["app"]
    upstream: dict[str, object] = {"servers": servers} if servers else {}
    extra: dict[str, object] = {}
    if tier == "remote":  # the accounts writer discovery and the switchover use
        for key, user in (("monitor", "monitor"), ("replication", "repl")):
            upstream[key] = {"user": sb.users[user].name, "password": sb.users[user].password}
    if fleet is not None:  # act two: a fleet on the sandbox's etcd
        extra["fleet"] = {"etcd": [sb.etcd], "cluster": "demo", "name": fleet, "lease_ttl": "2s"}
        if tier == "remote":
            extra["failover"] = {"mode": "auto", "buffer_window": "15s", "min_interval": "60s"}
            upstream["health"] = {"interval": "200ms", "timeout": "500ms"}
    return parse_config(
        {
            "tier": tier,
            "listen": listen,
            "users": [{"name": app.name, "password": app.password}],
            "upstream": upstream,
            "pool": {"max_connections": cap, "acquire_timeout": "30s"},
            "log": {"level": "warning"},
            **(
                {"heartbeat": {"user": app.name, "password": app.password, "interval": "100ms"}}
                if heartbeat
                else {}
            ),
            **extra,
        },
        allow_zero_port=True,
    )


def heartbeat_line(beats: list[tuple[float, float | None]], switched: object) -> str:
    """The customer's view: heartbeat writes through local tier 1, and the switchover in it."""
    ok = sorted(took for _, took in beats if took is not None)
    failed = sum(1 for _, took in beats if took is None)
    if not ok:
        return f"  heartbeat                  no successful write ({failed} failed)"
    worst = max(beats, key=lambda b: b[1] or 0.0)
    median = ok[len(ok) // 2]
    line = (
        f"  heartbeat (every 100 ms)   {len(ok)} writes ok, {failed} failed; p50 "
        f"{median * 1000:.1f} ms, longest {worst[1] * 1000:.0f} ms"  # type: ignore[operator]
    )
    if isinstance(switched, Switchover):
        line += " (the switchover: a dip, not a gap)"
    return line


async def switch_over_midway(remote: Tier, target: str, after: float) -> Switchover | str:
    """The SRE's button, pressed while the crowd writes: the record, or why it failed."""
    await asyncio.sleep(after)
    record, error = await control.switchover(remote, target, [])
    return error if error is not None or record is None else record


async def _story(sb: sandbox.Sandbox, clients: int, seconds: float, base: Path, hosts: int) -> int:
    app = sb.users["app"]
    root = sb.users["root"]
    primary = sb.primary
    sandbox.sql(primary, "CREATE DATABASE IF NOT EXISTS sluice_demo")
    sandbox.sql(
        primary,
        "CREATE TABLE IF NOT EXISTS sluice_demo.events (id BIGINT PRIMARY KEY, "
        "client INT, payload VARCHAR(255)) ENGINE=InnoDB",
    )
    monitors = []
    for server in sb.servers:
        monitor = await open_connection(server.name, Address("tcp", server.host, server.port), 10)
        await monitor.login(Credential.of_password(root.name, root.password), AS_CLIENT)
        monitors.append(monitor)
    limit = int((await monitors[0].query("SELECT @@max_connections")).rows[0][0] or 0)

    remote = Tier(
        _config(
            "remote",
            ["127.0.0.1:0"],
            [{"name": s.name, "address": f"{s.host}:{s.port}"} for s in sb.servers],
            REMOTE_CAP,
            sb,
        )
    )
    await remote.start()
    remote_address = remote.listen_addresses()[0]
    local: list[Tier] = []
    for host in range(1, hosts + 1):
        tier = Tier(
            _config(
                "local",
                [f"unix:{base}/app-host-{host}.sock"],
                [{"name": "remote1", "address": remote_address}],
                LOCAL_POOL,
                sb,
                heartbeat=host == 1,  # one app host's heartbeat: the customer's view
            )
        )
        await tier.start()
        local.append(tier)
    print(
        f"sluice demo: database max_connections={limit}; remote tier on {remote_address} "
        f"(cap {REMOTE_CAP}); {hosts} local tiers on unix sockets (pool {LOCAL_POOL} each)"
    )

    stop = asyncio.Event()
    peaks = Peaks()
    sampler = asyncio.create_task(sample(monitors, remote, local, peaks, stop))
    credential = local[0].users.credential(app.name)
    assert credential is not None
    tally = Tally()
    print(f"sluice demo: {clients} app connections write and read for {seconds:.0f} s")
    loop = asyncio.get_running_loop()
    started = loop.time()
    until = started + seconds
    target = sb.replicas[0].name
    switchover = asyncio.create_task(switch_over_midway(remote, target, seconds / 2))
    await asyncio.gather(
        *(
            app_client(n, local[n % hosts].bound_address(0), credential, until, tally)
            for n in range(1, clients + 1)
        )
    )
    switched = await switchover
    elapsed = loop.time() - started
    stop.set()
    await sampler
    beat = local[0].heartbeat
    beats = list(beat.recent) if beat is not None else []
    for tier in local:
        await tier.stop()
    await remote.stop()

    # Read back from the primary the writes ended on.
    final = next(m for m, s in zip(monitors, sb.servers, strict=True) if s.name == target)
    if not isinstance(switched, Switchover):
        final = monitors[0]
    stored = await final.query("SELECT id FROM sluice_demo.events")
    present = {int(row[0]) for row in stored.rows}
    lost = [k for k in tally.acknowledged if k not in present]

    lat = sorted(tally.latencies) or [0.0]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print()
    print("sluice demo report")
    print(f"  app connections            {clients} over {hosts} app hosts")
    for i in range(hosts):
        print(
            f"    local tier {i + 1}              {peaks.app_per_local[i]} app connections -> "
            f"{peaks.local_to_remote[i]} to the remote tier (pool {LOCAL_POOL})"
        )
    print(
        f"  remote tier                {sum(peaks.local_to_remote)} from local tiers (max) -> "
        f"{peaks.remote_to_db} to the database (cap {REMOTE_CAP})"
    )
    print(
        f"  database connections max   {peaks.database} of max_connections {limit} "
        "(Threads_connected, incl. the demo's monitor)"
    )
    print(
        f"  queries                    {tally.queries} in {elapsed:.1f} s "
        f"({tally.queries / elapsed:.0f} QPS)"
    )
    print(
        f"  write+read latency         p50 {statistics.median(lat) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms"
    )
    if isinstance(switched, Switchover):
        print(
            f"  switchover                 {switched.source} -> {switched.target} "
            f"{switched.outcome} in {switched.total_ms:.0f} ms; writes paused "
            f"{switched.pause_ms:.0f} ms"
        )
    else:
        print(f"  switchover                 FAILED: {switched}")
    print(heartbeat_line(beats, switched))
    print(f"  client errors              {sum(tally.errors.values())}")
    for text, count in sorted(tally.errors.items(), key=lambda kv: -kv[1])[:5]:
        print(f"    {count}x {text}")
    print(
        f"  acknowledged writes        {len(tally.acknowledged)}, lost {len(lost)} "
        f"(read back from {target if isinstance(switched, Switchover) else 'db1'})"
    )
    ok = not tally.errors and not lost and tally.queries > 0 and peaks.database <= limit
    ok = ok and isinstance(switched, Switchover)
    print(f"  result                     {'OK' if ok else 'PROBLEMS (see above)'}")
    fleet_ok = await _fleet_story(sb, base, min(clients, 300), seconds, monitors)
    for monitor in monitors:
        monitor.close()
    return 0 if ok and fleet_ok else 1


async def _fleet_story(
    sb: sandbox.Sandbox,
    base: Path,
    clients: int,
    seconds: float,
    monitors: list[ServerConnection],
) -> bool:
    """Act two, the unplanned: a fleet on etcd. Two remote tiers register, a local tier takes
    them from etcd; under load a third remote tier joins, then the primary is killed with
    kill -9 and the fleet promotes the replica by itself (failover.mode auto)."""
    print()
    print(f"sluice demo, act two: a fleet on etcd ({sb.etcd}); {clients} app connections")
    app = sb.users["app"]
    servers = [{"name": s.name, "address": f"{s.host}:{s.port}"} for s in sb.servers]
    cap = 16  # per remote tier: three of them stay under the database's limit

    async def remote(name: str) -> Tier:
        tier = Tier(_config("remote", ["127.0.0.1:0"], servers, cap, sb, fleet=name))
        await tier.start()
        return tier

    remotes = [await remote("remote1"), await remote("remote2")]
    local = Tier(
        _config("local", [f"unix:{base}/fleet-app-host.sock"], [], LOCAL_POOL, sb, fleet="local1")
    )
    await local.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len(local.upstream.servers) < 2 and loop.time() < deadline:
        await asyncio.sleep(0.1)
    primary = next(r for r in remotes if r.upstream.current is not None).upstream.current
    assert primary is not None
    credential = local.users.credential(app.name)
    assert credential is not None
    tally = Tally()
    issued: dict[int, float] = {}
    started = loop.time()
    until = started + seconds
    events: dict[str, float] = {}

    async def fault() -> None:
        await asyncio.sleep(seconds / 3)
        remotes.append(await remote("remote3"))
        events["joined"] = loop.time()
        await asyncio.sleep(seconds / 3)
        victim = sb.server(primary.name)
        os.kill(victim.pid, signal.SIGKILL)
        events["killed"] = loop.time()

    faulting = asyncio.create_task(fault())
    address = local.bound_address(0)
    await asyncio.gather(
        *(
            app_client(n, address, credential, until, tally, issued)
            for n in range(10_001, 10_001 + clients)
        )
    )
    await faulting
    # The fleet's record and what every tier follows.
    records = {(r.fleet.name, r.fleet.writer.server, r.fleet.writer.epoch) for r in remotes
               if r.fleet is not None and r.fleet.writer is not None}  # fmt: skip
    new_primary = (
        remotes[0].fleet.writer.server if remotes[0].fleet and remotes[0].fleet.writer else None
    )
    served_by_new = sum(1 for _ in remotes[-1].sessions)
    auto = [r.auto_failover.last for r in remotes if r.auto_failover and r.auto_failover.last]
    promoted = [a for a in auto if str(a["outcome"]).startswith("promoted")]
    members = len(local.upstream.servers)
    for tier in (local, *remotes):
        await tier.stop()
    final = next(
        (m for m, s in zip(monitors, sb.servers, strict=True) if s.name == new_primary), None
    )
    lost: list[int] = []
    if final is not None:
        stored = await final.query("SELECT id FROM sluice_demo.events WHERE id >= 10001000000")
        present = {int(row[0]) for row in stored.rows}
        lost = [k for k in tally.acknowledged if k not in present]
    killed = events.get("killed", until)
    late_errors = sum(1 for t in tally.error_times if t >= killed + 0.2)
    print("sluice demo report, act two")
    print(f"  fleet members              {members} remote tiers followed by the local tier "
          f"(remote3 joined {events.get('joined', started) - started:.1f} s in)")  # fmt: skip
    print(f"  remote3                    {served_by_new} sessions on it at the end")
    print(f"  primary killed (kill -9)   {primary.name} at {killed - started:.1f} s")
    for a in promoted:
        print(f"  automatic failover         {a['outcome']} ({a['took_ms']} ms)")
    epochs = sorted({(writer, epoch) for _, writer, epoch in records})
    print(f"  writer record (epochs)     {', '.join(f'{w} at epoch {e}' for w, e in epochs)} "
          f"on all {len(records)} remote tiers" if len(epochs) == 1 else
          f"  writer record (epochs)     DISAGREE: {sorted(records)}")  # fmt: skip
    print(f"  queries                    {tally.queries} in {loop.time() - started:.1f} s")
    print(f"  client errors              {sum(tally.errors.values())} "
          f"({late_errors} for commands issued after the kill)")  # fmt: skip
    for text, count in sorted(tally.errors.items(), key=lambda kv: -kv[1])[:5]:
        print(f"    {count}x {text}")
    print(f"  acknowledged writes        {len(tally.acknowledged)}, lost {len(lost)} "
          f"(read back from {new_primary})")  # fmt: skip
    ok = (
        len(promoted) == 1
        and len(epochs) == 1
        and epochs[0][0] != primary.name
        and late_errors == 0
        and not lost
        and final is not None
        and tally.queries > 0
    )
    print(f"  result                     {'OK' if ok else 'PROBLEMS (see above)'}")
    return ok
