"""A fleet on etcd (first slice): membership on a lease, a switchover that pauses every live
remote tier found in etcd, one change of writer at a time, and etcd out of the data path.

Real `sluice run` processes, a real etcd (Debian's etcd-server, started by the sandbox) and a
real MariaDB primary with two replicas.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aetcd
import pymysql
import pytest

from proxy import sandbox as sandbox_mod

from .conftest import short_tmp_dir
from .harness import fetch_all
from .processes import ROOT, Load, TierProcess, free_port, make_table

APP_PASSWORD = "app-pass"
TOKEN = "fault-token"
TTL = "2s"


@pytest.fixture
def cluster(tmp_path_factory):
    path = short_tmp_dir(tmp_path_factory, "fleet")
    sb = sandbox_mod.up(path, replicas=2, max_connections=300, etcd=True)
    try:
        yield sb
    finally:
        sandbox_mod.down(path)


def fleet_section(sb, cluster: str, name: str) -> dict:
    return {"etcd": [sb.etcd], "cluster": cluster, "name": name, "lease_ttl": TTL}


def remote(sb, work: Path, name: str, cluster: str, processes: list, **extra) -> TierProcess:
    config = {
        "tier": "remote",
        "users": [{"name": "app", "password": APP_PASSWORD}],
        "upstream": {
            "servers": [{"name": s.name, "address": f"{s.host}:{s.port}"} for s in sb.servers],
            "monitor": {"user": "sluice", "password": sb.users["monitor"].password},
            "replication": {"user": "repl", "password": sb.users["repl"].password},
        },
        "pool": {"max_connections": 20, "acquire_timeout": "20s"},
        "pause": {"drain_timeout": "2s", "max_pause": "20s"},
        "fleet": fleet_section(sb, cluster, name),
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    proc = TierProcess(work, name, config)
    processes.append(proc)
    return proc.start()


def local(sb, work: Path, remotes: list[TierProcess], cluster: str, processes: list):
    config = {
        "tier": "local",
        "users": [{"name": "app", "password": APP_PASSWORD}],
        "upstream": {
            "servers": [{"name": r.name, "address": r.address} for r in remotes],
        },
        "pool": {"max_connections": 24, "acquire_timeout": "20s"},
        "fleet": fleet_section(sb, cluster, "local1"),
    }
    proc = TierProcess(work, "local1", config)
    processes.append(proc)
    return proc.start()


def members(proc: TierProcess) -> list[str] | None:
    try:
        return [m["name"] for m in proc.status()["fleet"]["members"]]
    except OSError:  # (its admin endpoint starts a moment after its listener)
        return None


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout}s (last: {value!r})")
        time.sleep(0.1)


def ctl(proc: TierProcess, *args: str) -> subprocess.CompletedProcess:
    admin = f"127.0.0.1:{proc.admin_port}"
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", "ctl", "--admin", admin, "--token", TOKEN, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def etcd_pid(sb) -> int:
    return int((Path(sb.dir) / "etcd.pid").read_text())


def test_tiers_join_on_a_lease_and_leave_on_sigterm_or_when_their_lease_expires(
    cluster, processes, tmp_path
):
    name = f"c{uuid.uuid4().hex[:6]}"
    r1 = remote(cluster, tmp_path, "remote1", name, processes)
    r2 = remote(cluster, tmp_path, "remote2", name, processes)
    l1 = local(cluster, tmp_path, [r1, r2], name, processes)
    everyone = ["local1", "remote1", "remote2"]
    for proc in (r1, r2, l1):
        wait_for(lambda proc=proc: members(proc) == everyone, 5, f"{proc.name} sees all")
    record = next(m for m in r2.status()["fleet"]["members"] if m["name"] == "remote1")
    assert record["tier"] == "remote" and record["address"] == r1.address
    assert record["admin"] == f"127.0.0.1:{r1.admin_port}"
    assert r1.status()["fleet"]["etcd"] == "ok"

    r2.stop()  # SIGTERM: it deregisters before draining
    wait_for(lambda: members(r1) == ["local1", "remote1"], 2, "remote2 gone after SIGTERM")
    l1.kill()  # kill -9: nobody deregisters it; its lease expires
    killed = time.monotonic()
    wait_for(lambda: members(r1) == ["remote1"], 6, "local1 gone when its lease expired")
    assert time.monotonic() - killed >= 1.0  # (it was the lease, not a goodbye)


def test_a_switchover_on_one_tier_moves_every_live_remote_tier_found_in_etcd(
    cluster, processes, tmp_path
):
    name = f"c{uuid.uuid4().hex[:6]}"
    table = make_table(cluster, "fleet")
    sandbox_mod.wait_replicas_caught_up(cluster)
    r1 = remote(cluster, tmp_path, "remote1", name, processes)
    r2 = remote(cluster, tmp_path, "remote2", name, processes)
    l1 = local(cluster, tmp_path, [r1, r2], name, processes)
    wait_for(lambda: len(members(r1)) == 3, 5, "the fleet registered")
    load = Load("127.0.0.1", l1.port, APP_PASSWORD, table, clients=10)
    result: dict = {}

    async def switch():
        await asyncio.sleep(1.5)
        # Only remote1 is named: it finds remote2 in etcd (no switchover.peers anywhere).
        result["ctl"] = await asyncio.to_thread(ctl, r1, "switchover", "--to", "db2")

    asyncio.run(load.run(4, switch()))
    done = result["ctl"]
    assert done.returncode == 0, done.stdout + done.stderr
    for proc in (r1, r2):
        assert proc.status()["upstream"]["current"] == "db2"
    assert load.errors() == []
    acknowledged = load.acknowledged()
    assert len(acknowledged) > 100
    db2 = cluster.server("db2")
    conn = pymysql.connect(
        host=db2.host, port=db2.port, user="root", password=cluster.users["root"].password
    )
    with conn.cursor() as cur:
        cur.execute(f"SELECT id FROM {table}")
        stored = {row[0] for row in cur.fetchall()}
    conn.close()
    assert set(acknowledged) <= stored
    switchovers = r1.status()["switchover"]["recent"]
    assert switchovers[0]["peers"] == [f"127.0.0.1:{r2.admin_port}"]
    # The writer and its epoch in etcd: recorded at epoch 1 when the fleet first found
    # db1, moved to db2 at epoch 2 by the switchover; every tier reads the same.
    assert switchovers[0]["epoch"] == 2
    for proc in (r1, r2, l1):
        wait_for(
            lambda proc=proc: (
                (proc.status()["fleet"]["primary"], proc.status()["fleet"]["epoch"]) == ("db2", 2)
            ),
            5,
            f"{proc.name} reads db2 at epoch 2",
        )


def root_sql(server, statement: str) -> list:
    return fetch_all(
        statement,
        host=server.host,
        port=server.port,
        user="root",
        password="root-pass",
        autocommit=True,
    )


def test_an_old_primary_that_comes_back_writable_is_fenced_and_gets_no_writes(
    cluster, processes, tmp_path
):
    name = f"c{uuid.uuid4().hex[:6]}"
    table = make_table(cluster, "fence")
    sandbox_mod.wait_replicas_caught_up(cluster)
    r1 = remote(cluster, tmp_path, "remote1", name, processes)
    wait_for(lambda: r1.status()["fleet"]["epoch"] == 1, 10, "the writer recorded")
    done = ctl(r1, "switchover", "--to", "db2")
    assert done.returncode == 0, done.stdout + done.stderr
    db1, db2 = cluster.server("db1"), cluster.server("db2")
    load = Load("127.0.0.1", r1.port, APP_PASSWORD, table, clients=5)
    seen: dict = {}

    async def old_primary_comes_back():
        await asyncio.sleep(0.5)
        # db1 stops following db2 and turns writable, as a restarted old primary whose
        # config says read_only=OFF would: it looks like a writer, but it is not the fleet's.
        await asyncio.to_thread(root_sql, db1, "STOP SLAVE")
        await asyncio.to_thread(root_sql, db1, "RESET SLAVE ALL")
        await asyncio.to_thread(root_sql, db1, "SET GLOBAL read_only = OFF")
        seen["writable_at"] = time.monotonic()

        def fenced():
            roles = {s["name"]: s["role"] for s in r1.status()["servers"]}
            return roles["db1"] == "fenced" and roles

        seen["roles"] = await asyncio.to_thread(wait_for, fenced, 15, "db1 fenced")
        seen["read_only"] = await asyncio.to_thread(root_sql, db1, "SELECT @@GLOBAL.read_only")

    asyncio.run(load.run(2, old_primary_comes_back()))
    assert load.errors() == []
    assert seen["read_only"] == [(1,)]  # fenced: read_only again
    assert seen["roles"]["db2"] == "primary"
    assert r1.status()["upstream"]["current"] == "db2"
    on_db1 = {row[0] for row in root_sql(db1, f"SELECT id FROM {table}")}
    on_db2 = {row[0] for row in root_sql(db2, f"SELECT id FROM {table}")}
    acknowledged = set(load.acknowledged())
    assert acknowledged and acknowledged <= on_db2
    # What db1 has, it replicated from db2 before it stopped following: nothing of its own,
    # and none of the writes acknowledged while it looked writable.
    assert on_db1 <= on_db2
    later = {o.row for o in load.outcomes if o.error is None and o.issued >= seen["writable_at"]}
    assert later and not (later & on_db1)
    assert r1.status()["fleet"]["epoch"] == 2


def test_a_second_change_of_writer_is_refused_naming_the_holder(cluster, processes, tmp_path):
    name = f"c{uuid.uuid4().hex[:6]}"
    r1 = remote(cluster, tmp_path, "remote1", name, processes)
    wait_for(lambda: members(r1) == ["remote1"], 5, "registered")
    host, port = cluster.etcd.split(":")

    async def hold_the_lock():
        async with aetcd.Client(host=host, port=int(port)) as client:
            holder = {"holder": "remote9", "purpose": "switchover 7 to db3", "since": "12:00:00"}
            await client.put(f"/sluice/{name}/lock".encode(), json.dumps(holder).encode())

    asyncio.run(hold_the_lock())
    done = ctl(r1, "switchover", "--to", "db2")
    assert done.returncode != 0
    assert "remote9 holds the lock for switchover 7 to db3 since 12:00:00" in done.stdout + (
        done.stderr
    )
    assert "nothing was changed" in done.stdout + done.stderr
    assert r1.status()["upstream"]["current"] == "db1"


def test_with_etcd_gone_tiers_serve_on_and_a_switchover_says_why_it_cannot(
    cluster, processes, tmp_path
):
    name = f"c{uuid.uuid4().hex[:6]}"
    r1 = remote(cluster, tmp_path, "remote1", name, processes)
    wait_for(lambda: members(r1) == ["remote1"], 5, "registered")
    pid = etcd_pid(cluster)
    os.kill(pid, signal.SIGSTOP)  # etcd hangs: no answer, no reset
    try:
        wait_for(lambda: r1.status()["fleet"]["etcd"].startswith("unreachable"), 10, "noticed")
        table = make_table(cluster, "noetcd")
        load = Load("127.0.0.1", r1.port, APP_PASSWORD, table, clients=8)
        asyncio.run(load.run(2))  # the data path does not need etcd
        assert load.errors() == [] and len(load.acknowledged()) > 50
        done = ctl(r1, "switchover", "--to", "db2")
        assert done.returncode != 0
        assert "etcd is unreachable" in done.stdout + done.stderr
        assert r1.status()["upstream"]["current"] == "db1"
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: r1.status()["fleet"]["etcd"] == "ok", 10, "etcd back")
    assert members(r1) == ["remote1"]


def test_a_local_tier_follows_remote_tiers_as_they_join_and_leave_under_load(
    cluster, processes, tmp_path
):
    """The elastic remote layer: a local tier with fleet.etcd and no upstream.servers spreads
    its sessions over the live remote tiers in etcd; a new one gets work within seconds, one
    that leaves (SIGTERM) stops getting it, and no client sees an error either way."""
    name = f"c{uuid.uuid4().hex[:6]}"
    table = make_table(cluster, "elastic")
    remote(cluster, tmp_path, "remote1", name, processes)
    r2 = remote(cluster, tmp_path, "remote2", name, processes)
    config = {
        "tier": "local",
        "users": [{"name": "app", "password": APP_PASSWORD}],
        "pool": {"max_connections": 24, "acquire_timeout": "20s"},
        "fleet": fleet_section(cluster, name, "local1"),
    }
    l1 = TierProcess(tmp_path, "local1", config)
    processes.append(l1)
    l1.start()

    def servers(proc: TierProcess) -> list[str] | None:
        try:
            return sorted(s["name"] for s in proc.status()["servers"])
        except OSError:
            return None

    wait_for(lambda: servers(l1) == ["remote1", "remote2"], 5, "the local tier's remote tiers")
    load = Load("127.0.0.1", l1.port, APP_PASSWORD, table, clients=12)
    seen: dict = {}

    async def elastic():
        await asyncio.sleep(1.0)
        r3 = await asyncio.to_thread(remote, cluster, tmp_path, "remote3", name, processes)
        seen["joined"] = time.monotonic()

        def busy(proc):
            try:
                return sum(p["active"] + p["idle"] for p in proc.status()["pools"]) > 0
            except OSError:
                return False

        await asyncio.to_thread(wait_for, lambda: busy(r3), 10, "remote3 gets work")
        seen["r3_busy_after"] = time.monotonic() - seen["joined"]
        await asyncio.to_thread(r2.stop)  # SIGTERM: it leaves the fleet, then drains
        seen["left"] = time.monotonic()
        await asyncio.to_thread(
            wait_for, lambda: servers(l1) == ["remote1", "remote3"], 5, "remote2 gone"
        )
        await asyncio.sleep(1.0)

    asyncio.run(load.run(2, elastic()))
    assert load.errors() == [], load.errors()[:5]
    assert seen["r3_busy_after"] < 10
    after = [o for o in load.outcomes if o.issued >= seen["left"] + 1]
    assert after and all(o.error is None for o in after)
    status = l1.status()
    assert status["fleet"]["remote_connections_cap"] == 40  # remote1 + remote3, 20 each


def test_a_dead_primary_promoted_from_outside_and_retargeted_is_recorded_not_fenced(
    cluster, processes, tmp_path
):
    """With a fleet, an orchestrator's promotion reaches sluice through RETARGET (its
    post-takeover hook): the record moves to the new primary at the next epoch, so no tier
    fences it; until then commands wait for a writer (the record's dead writer is not one)."""
    name = f"c{uuid.uuid4().hex[:6]}"
    table = make_table(cluster, "dead")
    sandbox_mod.wait_replicas_caught_up(cluster)
    r1 = remote(cluster, tmp_path, "remote1", name, processes)
    wait_for(lambda: (r1.status().get("fleet") or {}).get("epoch") == 1, 10, "writer recorded")
    db1, db2 = cluster.server("db1"), cluster.server("db2")
    load = Load("127.0.0.1", r1.port, APP_PASSWORD, table, clients=8)
    seen: dict = {}

    async def primary_dies():
        await asyncio.sleep(0.7)
        sandbox_mod.wait_replicas_caught_up(cluster)
        os.kill(db1.pid, signal.SIGKILL)
        seen["killed"] = time.monotonic()
        await asyncio.sleep(1.5)  # the orchestrator notices and promotes db2
        for statement in ("STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = OFF"):
            await asyncio.to_thread(root_sql, db2, statement)
        seen["promoted"] = time.monotonic()
        # Its hooks take a moment: writer discovery (every 250 ms while commands wait) sees
        # db2 writable while the record still names the dead db1.
        await asyncio.sleep(1.0)
        seen["retarget"] = await asyncio.to_thread(ctl, r1, "retarget", "--to", "db2")
        await asyncio.sleep(1.5)

    asyncio.run(load.run(2, primary_dies()))
    assert seen["retarget"].returncode == 0, seen["retarget"].stdout + seen["retarget"].stderr
    late = load.errors(issued_after=seen["killed"] + 0.5)
    assert late == [], late[:5]  # they waited for the writer instead of failing
    status = r1.status()
    assert (status["fleet"]["primary"], status["fleet"]["epoch"]) == ("db2", 2)
    roles = {s["name"]: s["role"] for s in status["servers"]}
    assert roles["db2"] == "primary"
    assert root_sql(db2, "SELECT @@GLOBAL.read_only") == [(0,)]  # not fenced
    after = [o for o in load.outcomes if o.error is None and o.issued > seen["promoted"]]
    assert after


@pytest.fixture
def semisync_cluster(tmp_path_factory):
    path = short_tmp_dir(tmp_path_factory, "auto")
    sb = sandbox_mod.up(path, replicas=2, max_connections=300, etcd=True, semi_sync=True)
    try:
        yield sb
    finally:
        sandbox_mod.down(path)


def test_a_dead_primary_fails_over_by_itself_once_with_no_error_and_nothing_lost(
    semisync_cluster, processes, tmp_path
):
    """failover.mode auto: kill -9 of the primary under load gives exactly one promotion,
    the same new epoch on every tier, no error for commands issued after the kill, every
    acknowledged write on the new primary, and the other replica following it."""
    sb = semisync_cluster
    name = f"c{uuid.uuid4().hex[:6]}"
    table = make_table(sb, "auto")
    sandbox_mod.wait_replicas_caught_up(sb)
    remotes = [
        remote(
            sb,
            tmp_path,
            tier_name,
            name,
            processes,
            failover={"mode": "auto", "buffer_window": "20s", "min_interval": "60s"},
            upstream={"health": {"interval": "200ms", "timeout": "500ms"}},
        )
        for tier_name in ("remote1", "remote2")
    ]
    l1 = local(sb, tmp_path, remotes, name, processes)
    for proc in remotes:
        wait_for(
            lambda proc=proc: (proc.status().get("fleet") or {}).get("epoch") == 1,
            10,
            f"{proc.name} reads the writer",
        )
    db1 = sb.server("db1")
    load = Load("127.0.0.1", l1.port, APP_PASSWORD, table, clients=10)
    seen: dict = {}

    async def primary_dies():
        await asyncio.sleep(1.0)
        os.kill(db1.pid, signal.SIGKILL)
        seen["killed"] = time.monotonic()

        def recorded():
            epochs = {
                (p.status()["fleet"]["primary"], p.status()["fleet"]["epoch"]) for p in remotes
            }
            return len(epochs) == 1 and next(iter(epochs))[1] == 2 and epochs

        seen["epochs"] = await asyncio.to_thread(wait_for, recorded, 20, "one new epoch")
        seen["recorded"] = time.monotonic()
        await asyncio.sleep(1.5)

    asyncio.run(load.run(2, primary_dies()))
    ((primary, epoch),) = seen["epochs"]
    assert primary in ("db2", "db3") and epoch == 2
    late = load.errors(issued_after=seen["killed"] + 0.2)
    assert late == [], late[:5]
    logs = "".join(p.log() for p in remotes)
    assert logs.count("automatic failover from db1: promoted") == 1, logs[-3000:]
    new = sb.server(primary)
    other = sb.server("db3" if primary == "db2" else "db2")
    stored = {row[0] for row in root_sql(new, f"SELECT id FROM {table}")}
    acknowledged = set(load.acknowledged())
    assert acknowledged and acknowledged <= stored  # nothing acknowledged was lost
    conn = pymysql.connect(
        host=other.host, port=other.port, user="root", password="root-pass",
        cursorclass=pymysql.cursors.DictCursor,
    )  # fmt: skip
    with conn.cursor() as cur:
        cur.execute("SHOW SLAVE STATUS")
        row = cur.fetchone()
    conn.close()
    assert row["Master_Port"] == new.port and row["Slave_IO_Running"] == "Yes"


def test_a_partition_between_sluice_and_the_primary_alone_does_not_fail_over(
    semisync_cluster, processes, tmp_path
):
    """The remote tier reaches db1 through a relay that goes away (sluice is cut off from
    db1) while the replicas still replicate from it: the fleet does not fail over, says
    why, and commands wait until db1 is reachable again."""
    sb = semisync_cluster
    name = f"c{uuid.uuid4().hex[:6]}"
    table = make_table(sb, "part")
    sandbox_mod.wait_replicas_caught_up(sb)
    db1 = sb.server("db1")
    relay_port = free_port()

    def relay() -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench/byte_relay.py"), str(relay_port), db1.host,
             str(db1.port)],
            start_new_session=True,
        )  # fmt: skip
        wait_for(lambda: _accepts(relay_port), 5, "the relay listens")
        return proc

    path = relay()
    servers = [{"name": "db1", "address": f"127.0.0.1:{relay_port}"}] + [
        {"name": s.name, "address": f"{s.host}:{s.port}"} for s in sb.replicas
    ]
    r1 = remote(
        sb,
        tmp_path,
        "remote1",
        name,
        processes,
        failover={"mode": "auto", "buffer_window": "30s"},
        upstream={"servers": servers, "health": {"interval": "200ms", "timeout": "500ms"}},
    )
    wait_for(lambda: (r1.status().get("fleet") or {}).get("epoch") == 1, 10, "writer recorded")
    load = Load("127.0.0.1", r1.port, APP_PASSWORD, table, clients=5)
    seen: dict = {}

    async def partition():
        nonlocal path
        await asyncio.sleep(1.0)
        path.kill()  # sluice's only way to db1 is gone; the replicas' is not
        path.wait()
        seen["cut"] = time.monotonic()

        def refused():
            last = r1.status()["failover"]["auto_last"]
            return last is not None and last["outcome"].startswith("refused") and last

        seen["auto"] = await asyncio.to_thread(wait_for, refused, 20, "the failover refused")
        path = await asyncio.to_thread(relay)  # the partition heals
        seen["healed"] = time.monotonic()
        await asyncio.sleep(1.5)

    try:
        asyncio.run(load.run(2, partition()))
    finally:
        path.kill()
    assert "still replicate from db1" in seen["auto"]["outcome"], seen["auto"]
    status = r1.status()
    assert (status["fleet"]["primary"], status["fleet"]["epoch"]) == ("db1", 1)
    assert status["upstream"]["current"] == "db1"
    assert root_sql(sb.server("db2"), "SELECT @@GLOBAL.read_only") == [(1,)]  # not promoted
    late = load.errors(issued_after=seen["cut"] + 0.5)
    assert late == [], late[:5]  # they waited for db1 instead of failing
    after = [o for o in load.outcomes if o.error is None and o.issued > seen["healed"]]
    assert after


def _accepts(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
