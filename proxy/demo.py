"""`sluice demo`: the story on one machine, with real parts, ending in a short report.

A sandbox MariaDB cluster starts, a sluice tier starts in front of it, and a crowd of app
connections writes and reads through sluice for a few seconds. Every acknowledged write is read
back from the database at the end, so the report's "lost writes" is measured, not assumed.
The app clients speak the MySQL protocol with sluice's own client code (no test-only drivers
needed), over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import sandbox
from .backend import ServerConnection, UpstreamError, open_connection
from .config import Address, parse_config
from .protocol.auth import stage1
from .protocol.constants import Capability
from .tier import Tier
from .users import Credential

DATABASE_LIMIT = 64
"""The sandbox database's max_connections: far below the app connections the demo opens."""

CLIENT_CAPS = (
    Capability.LONG_PASSWORD
    | Capability.PROTOCOL_41
    | Capability.SECURE_CONNECTION
    | Capability.PLUGIN_AUTH
    | Capability.TRANSACTIONS
    | Capability.MULTI_RESULTS
    | Capability.DEPRECATE_EOF
    | Capability.CONNECT_WITH_DB
)


@dataclass
class Tally:
    queries: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.errors[text] = self.errors.get(text, 0) + 1


async def app_client(
    n: int, address: Address, credential: Credential, until: float, tally: Tally
) -> None:
    """One app connection: insert a row, read it back, repeat until `until`."""
    try:
        conn = await open_connection("sluice", address, 10)
        await conn.login(credential, CLIENT_CAPS, database="sluice_demo")
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


async def sample_connections(monitor: ServerConnection, stop: asyncio.Event) -> int:
    """Highest Threads_connected seen on the database while the load runs."""
    peak = 0
    while not stop.is_set():
        result = await monitor.query("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        peak = max(peak, int(result.rows[0][1] or 0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    return peak


async def run_demo(clients: int = 200, seconds: float = 5.0, workdir: str | None = None) -> int:
    own_dir = workdir is None
    base = Path(workdir or tempfile.mkdtemp(prefix="sluice-demo-", dir="/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"sluice demo: starting a sandbox MariaDB cluster in {base}")
    sb = await asyncio.to_thread(sandbox.up, base / "db", replicas=1, max_connections=clients + 50)
    try:
        return await _story(sb, clients, seconds, base)
    finally:
        await asyncio.to_thread(sandbox.down, base / "db")
        if own_dir:
            shutil.rmtree(base, ignore_errors=True)
        print("sluice demo: sandbox stopped")


async def _story(sb: sandbox.Sandbox, clients: int, seconds: float, base: Path) -> int:
    app = sb.users["app"]
    root = sb.users["root"]
    primary = sb.primary
    sandbox.sql(primary, "CREATE DATABASE IF NOT EXISTS sluice_demo")
    sandbox.sql(
        primary,
        "CREATE TABLE IF NOT EXISTS sluice_demo.events (id BIGINT PRIMARY KEY, "
        "client INT, payload VARCHAR(255)) ENGINE=InnoDB",
    )
    config = parse_config(
        {
            "tier": "remote",
            "listen": ["127.0.0.1:0", f"unix:{base}/sluice.sock"],
            "users": [{"name": app.name, "password": app.password}],
            "upstream": {
                "servers": [{"name": s.name, "address": f"{s.host}:{s.port}"} for s in sb.servers]
            },
        },
        allow_zero_port=True,
    )
    tier = Tier(config)
    await tier.start()
    address = tier.bound_address(0)
    print(f"sluice demo: remote tier listening on {', '.join(tier.listen_addresses())}")

    monitor = await open_connection("db1", Address("tcp", primary.host, primary.port), 10)
    await monitor.login(Credential(root.name, stage1(root.password)), CLIENT_CAPS)
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_connections(monitor, stop))

    credential = tier.users.credential(app.name)
    assert credential is not None
    tally = Tally()
    print(f"sluice demo: {clients} app connections write and read for {seconds:.0f} s")
    loop = asyncio.get_running_loop()
    started = loop.time()
    until = started + seconds
    await asyncio.gather(
        *(app_client(n, address, credential, until, tally) for n in range(1, clients + 1))
    )
    elapsed = loop.time() - started
    stop.set()
    peak = await sampler
    await tier.stop()

    stored = await monitor.query("SELECT id FROM sluice_demo.events")
    present = {int(row[0]) for row in stored.rows}
    lost = [k for k in tally.acknowledged if k not in present]
    monitor.close()

    lat = sorted(tally.latencies) or [0.0]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print()
    print("sluice demo report")
    print(f"  app connections           {clients}")
    print(f"  database limit            max_connections = {DATABASE_LIMIT}, "
          f"sluice pool cap = {config.pool.max_connections}")
    print(f"  database connections max  {peak} (Threads_connected, incl. the demo's monitor)")
    print(
        f"  queries                   {tally.queries} in {elapsed:.1f} s "
        f"({tally.queries / elapsed:.0f} QPS)"
    )
    print(
        f"  write+read latency        p50 {statistics.median(lat) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms"
    )
    print(f"  client errors             {sum(tally.errors.values())}")
    for text, count in sorted(tally.errors.items(), key=lambda kv: -kv[1])[:5]:
        print(f"    {count}x {text}")
    print(f"  acknowledged writes       {len(tally.acknowledged)}, lost {len(lost)}")
    ok = not tally.errors and not lost and tally.queries > 0
    print(f"  result                    {'OK' if ok else 'PROBLEMS (see above)'}")
    return 0 if ok else 1
