"""Switchovers under load: how long do writers stall, do any fail, is any write lost?

One run starts a sandbox MariaDB primary with ``--replicas`` GTID replicas, two remote tiers
(``sluice run`` processes, each other's peers through ``sluice ctl``) and ``--hosts`` local tiers
(``sluice run``, unix sockets) spreading their sessions over both remote tiers. ``--clients``
aiomysql app connections write through the local tiers as fast as they can: autocommit
INSERTs, and every fifth time a two-row transaction. After ``--warmup`` seconds,
``--switchovers`` switchovers run ``--interval`` seconds apart, moving the primary to the next
server in turn (db1 -> db2 -> db1 ... with one replica), each through ``sluice ctl switchover``
exactly as an SRE would.

Every statement is timed from the client's side. The **client-visible stall** of a switchover
is the latency of the statements that were waiting while its pause lasted: the report gives
their max and p99 per switchover and over all, next to the latency outside switchovers, the
pause the tier itself measured, client errors (any error counts) and lost writes: every
acknowledged row is looked for on the final primary, and on every replica after it caught up.

Results go to ``--out`` (JSON: the switchover records with their step timings, per-second
throughput and latency, the summary), and a PNG of per-second p50/p99/max latency and
throughput with the switchovers marked goes next to it (matplotlib: ``pip install -e .[bench]``).

    .venv/bin/python bench/switchover.py --clients 200 --switchovers 6
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomysql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connection_limit import free_port, spawn_tier, wait_port, wait_unix  # noqa: E402

from proxy import ctl, sandbox  # noqa: E402

HOST = "127.0.0.1"
TOKEN = "bench-token"


@dataclass
class Load:
    """What the clients saw: one (start, latency, ok) per statement, acknowledged row ids."""

    samples: list[tuple[float, float]] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def client(n: int, path: Path, load: Load, connected: list[int]) -> None:
    conn = await aiomysql.connect(
        unix_socket=str(path), user="app", password="app-pass", db="app", autocommit=True
    )
    connected.append(n)
    row = n * 10_000_000
    try:
        async with conn.cursor() as cur:
            while not load.stop.is_set():
                row += 2
                began = time.monotonic()
                try:
                    if row % 10 == 0:
                        await conn.begin()
                        await cur.execute("INSERT INTO bench VALUES (%s, %s)", (row, n))
                        await cur.execute("INSERT INTO bench VALUES (%s, %s)", (row + 1, n))
                        await conn.commit()
                        load.acknowledged += (row, row + 1)
                    else:
                        await cur.execute("INSERT INTO bench VALUES (%s, %s)", (row, n))
                        load.acknowledged.append(row)
                except Exception as exc:  # counted, and the client carries on
                    load.errors.append((began, repr(exc)[:200]))
                    await asyncio.sleep(0.05)
                    continue
                load.samples.append((began, time.monotonic() - began))
    finally:
        conn.close()


def start_fleet(work: Path, sb: sandbox.Sandbox, hosts: int) -> tuple[list, list[str], list[Path]]:
    servers = [{"name": s.name, "address": f"{s.host}:{s.port}"} for s in sb.servers]
    procs, admins, ports = [], [], []
    for r in (1, 2):
        port, http = free_port(), free_port()
        proc = spawn_tier(
            work,
            f"remote{r}",
            {
                "tier": "remote",
                "listen": [f"{HOST}:{port}"],
                "admin": {"http": f"{HOST}:{http}", "token": TOKEN},
                "users": [{"name": "app", "password": "app-pass"}],
                "upstream": {
                    "servers": servers,
                    "monitor": {"user": "sluice", "password": "sluice-pass"},
                    "replication": {"user": "repl", "password": "repl-pass"},
                },
                "pool": {"max_connections": 24, "acquire_timeout": "30s"},
                "log": {"level": "info"},
            },
        )
        procs.append(proc)
        wait_port(port, proc)
        wait_port(http, proc)
        admins.append(f"{HOST}:{http}")
        ports.append(port)
    remotes = [{"name": f"remote{i + 1}", "address": f"{HOST}:{p}"} for i, p in enumerate(ports)]
    paths = []
    for h in range(1, hosts + 1):
        path = work / f"host{h}.sock"
        proc = spawn_tier(
            work,
            f"local{h}",
            {
                "tier": "local",
                "listen": [f"unix:{path}"],
                "users": [{"name": "app", "password": "app-pass"}],
                "upstream": {"servers": remotes},
                "pool": {"max_connections": 24, "acquire_timeout": "30s"},
                "log": {"level": "warning"},
            },
        )
        procs.append(proc)
        wait_unix(path, proc)
        paths.append(path)
    return procs, admins, paths


def stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def switchover(admins: list[str], target: str) -> dict:
    """`sluice ctl switchover`, then the record the first tier kept."""
    began = time.monotonic()
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        code = ctl.switchover(admins, TOKEN, target)
    ended = time.monotonic()
    status = ctl.call(admins[0], "GET", "/status", TOKEN)
    record = status["switchover"]["recent"][0]
    record.update(ctl_exit=code, began=began, ended=ended)
    return record


def pause_window(record: dict) -> tuple[float, float]:
    """When this switchover's pause was on, in this process's monotonic clock."""
    steps = {s["step"]: s for s in record["steps"]}
    start = record["began"] + steps["pause"]["at_ms"] / 1000
    resume = steps.get("resume")
    end = record["began"] + (resume["at_ms"] + resume["ms"]) / 1000 if resume else start
    return start, end


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def analyse(load: Load, records: list[dict], t0: float) -> dict[str, Any]:
    windows = [pause_window(r) for r in records]
    per_switch = []
    stalled_all: list[float] = []
    for record, (start, end) in zip(records, windows, strict=True):
        # A statement stalled by this pause was running at some moment of it.
        stalled = [lat for began, lat in load.samples if began <= end and began + lat >= start]
        stalled_all += stalled
        per_switch.append(
            {
                "id": record["id"],
                "from": record["from"],
                "to": record["to"],
                "outcome": record["outcome"],
                "tier_pause_ms": record["pause_ms"],
                "total_ms": record["total_ms"],
                "stalled_statements": len(stalled),
                "stall_max_ms": round(max(stalled, default=0) * 1000, 1),
                "stall_p99_ms": round(percentile(stalled, 0.99) * 1000, 1),
            }
        )
    quiet = [
        lat
        for began, lat in load.samples
        if not any(began <= end + 0.5 and began + lat >= start - 0.5 for start, end in windows)
    ]
    seconds: dict[int, list[float]] = {}
    for began, lat in load.samples:
        seconds.setdefault(int(began - t0), []).append(lat)
    timeline = [
        {
            "second": s,
            "statements": len(lats),
            "p50_ms": round(percentile(lats, 0.5) * 1000, 2),
            "p99_ms": round(percentile(lats, 0.99) * 1000, 2),
            "max_ms": round(max(lats) * 1000, 2),
        }
        for s, lats in sorted(seconds.items())
    ]
    return {
        "switchovers": per_switch,
        "stall_max_ms": round(max(stalled_all, default=0) * 1000, 1),
        "stall_p99_ms": round(percentile(stalled_all, 0.99) * 1000, 1),
        "steady_p99_ms": round(percentile(quiet, 0.99) * 1000, 1),
        "steady_max_ms": round(max(quiet, default=0) * 1000, 1),
        "timeline": timeline,
        "switch_seconds": [round(start - t0, 3) for start, _ in windows],
    }


def draw(result: dict, png: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no PNG: matplotlib is missing (pip install -e .[bench])"
    timeline = result["analysis"]["timeline"]
    x = [row["second"] for row in timeline]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
        top.plot(x, [row[key] for row in timeline], label=label)
    top.set_yscale("log")
    top.set_ylabel("statement latency (ms)")
    top.legend(loc="upper left")
    bottom.bar(x, [row["statements"] for row in timeline], width=0.9, color="tab:green")
    bottom.set_ylabel("statements / s")
    bottom.set_xlabel("seconds")
    for at in result["analysis"]["switch_seconds"]:
        for axis in (top, bottom):
            axis.axvline(at, color="tab:red", linestyle="--", linewidth=1)
    a = result["analysis"]
    fig.suptitle(
        f"{result['clients']} clients, {len(a['switchovers'])} switchovers (red): "
        f"stall max {a['stall_max_ms']} ms, p99 {a['stall_p99_ms']} ms; "
        f"errors {result['errors']}, lost {result['lost']}"
    )
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    return f"plot: {png}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sluice-switch-", dir="/tmp"))
    sb = await asyncio.to_thread(sandbox.up, work / "db", replicas=args.replicas)
    procs: list[subprocess.Popen] = []
    try:
        sandbox.sql(sb.primary, "CREATE TABLE app.bench (id BIGINT PRIMARY KEY, client INT)")
        procs, admins, paths = start_fleet(work, sb, args.hosts)
        load = Load()
        connected: list[int] = []
        clients = asyncio.gather(
            *(client(n, paths[n % len(paths)], load, connected) for n in range(args.clients))
        )
        while len(connected) < args.clients:
            if clients.done():
                clients.result()  # a client failed to connect: raise why
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await asyncio.sleep(args.warmup)
        names = [s.name for s in sb.servers]
        records = []
        for i in range(args.switchovers):
            target = names[(i + 1) % len(names)]
            records.append(await asyncio.to_thread(switchover, admins, target))
            print(
                f"switchover {i + 1}: -> {target} {records[-1]['outcome']}, "
                f"tier pause {records[-1]['pause_ms']} ms"
            )
            await asyncio.sleep(args.interval)
        load.stop.set()
        await clients
        final = names[args.switchovers % len(names)]
        primary = sb.server(final)
        position = sandbox.sql(primary, "SELECT @@GLOBAL.gtid_binlog_pos")[0][0]
        lost: dict[str, int] = {}
        acknowledged = set(load.acknowledged)
        for server in sb.servers:
            if server.name != final:
                sandbox.sql(server, f"SELECT MASTER_GTID_WAIT('{position}', 30)")
            present = {int(r[0]) for r in sandbox.sql(server, "SELECT id FROM app.bench")}
            lost[server.name] = len(acknowledged - present)
        return {
            "clients": args.clients,
            "hosts": args.hosts,
            "statements": len(load.samples),
            "acknowledged_rows": len(acknowledged),
            "errors": len(load.errors),
            "error_samples": [e for _, e in load.errors[:10]],
            "lost": lost[final],
            "lost_by_server": lost,
            "final_primary": final,
            "records": records,
            "analysis": analyse(load, records, t0),
        }
    finally:
        stop_all(procs)
        await asyncio.to_thread(sandbox.down, work / "db")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--hosts", type=int, default=2, help="local tiers")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--switchovers", type=int, default=6)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between them")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "switchover.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    a = result["analysis"]
    print()
    print(f"{result['clients']} clients over {result['hosts']} local tiers, 2 remote tiers")
    print(
        f"{'#':>2} {'move':<11} {'outcome':<8} {'tier pause':>10} {'stall max':>10} "
        f"{'stall p99':>10} {'stalled':>8}"
    )
    for s in a["switchovers"]:
        print(
            f"{s['id']:>2} {s['from'] + '->' + s['to']:<11} {s['outcome']:<8} "
            f"{s['tier_pause_ms']:>8} ms {s['stall_max_ms']:>7} ms {s['stall_p99_ms']:>7} ms "
            f"{s['stalled_statements']:>8}"
        )
    print(
        f"client-visible stall: max {a['stall_max_ms']} ms, p99 {a['stall_p99_ms']} ms; "
        f"outside switchovers p99 {a['steady_p99_ms']} ms, max {a['steady_max_ms']} ms"
    )
    print(
        f"statements {result['statements']}, acknowledged rows {result['acknowledged_rows']}, "
        f"client errors {result['errors']}, lost writes {result['lost']} "
        f"(by server {result['lost_by_server']})"
    )
    print(f"results: {args.out}")
    print(draw(result, args.out.with_suffix(".png")))
    ok = result["errors"] == 0 and not any(result["lost_by_server"].values())
    return 0 if ok and all(s["outcome"] == "done" for s in a["switchovers"]) else 1


if __name__ == "__main__":
    sys.exit(main())
