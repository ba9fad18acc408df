"""Unplanned faults against real `sluice run` processes: what clients see, measured.

Each scenario starts its own sandbox MariaDB (primary + replica; lossless semi-sync where a
write could be lost), the tiers as `sluice run` processes, and a writing load through a local
tier (aiomysql clients inserting rows with unique ids), then plays one fault:

- **hung remote tier**: one of two remote tiers is stopped (SIGSTOP) for --hang seconds; its
  kernel still accepts connections, so only the local tier's health probes can notice.
- **dead primary**: the primary is killed (kill -9); --promote-after seconds later an outside
  orchestrator (this script) lets the replica apply its relay log and promotes it.
- **vanished host**: a remote tier runs in a network namespace whose link goes down (packets
  dropped, no RST): keepalive and health probes are what notice.
- **abandoned queries**: clients start `SELECT BENCHMARK(…)` through both tiers and vanish
  (RST); the database is watched for those queries running on.
- **database stall**: the primary is stopped (SIGSTOP) for --stall seconds while clients give
  up after 1 s and retry: writes they gave up on must not run anyway once it resumes.

Per scenario: commands, errors by code, the longest and p99 latency of commands issued from
the fault on, acknowledged writes lost (every acknowledged id read back from the final
primary), and writes that ran although their client had given up. Results go to
bench/results/chaos.json.

    .venv/bin/python bench/chaos.py [--clients 20] [--only hung,dead,...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy import sandbox  # noqa: E402
from tests.processes import Load, NetNamespace, TierProcess  # noqa: E402

PASSWORD = "app-pass"
SCENARIOS = ("hung", "dead", "vanished", "abandoned", "stall")


def remote_config(sb: sandbox.Sandbox, *, servers: list[dict] | None = None) -> dict:
    monitor = sb.users["monitor"]
    return {
        "tier": "remote",
        "users": [{"name": "app", "password": PASSWORD}],
        "upstream": {
            "servers": servers
            or [{"name": s.name, "address": f"{s.host}:{s.port}"} for s in sb.servers],
            "monitor": {"user": monitor.name, "password": monitor.password},
        },
        "pool": {"max_connections": 20, "acquire_timeout": "20s"},
        "log": {"level": "warning"},
    }


def local_config(*remotes: TierProcess, **upstream: Any) -> dict:
    return {
        "tier": "local",
        "users": [{"name": "app", "password": PASSWORD}],
        "upstream": {
            "servers": [
                {"name": f"remote{i}", "address": r.address} for i, r in enumerate(remotes, 1)
            ],
            **upstream,
        },
        "pool": {"max_connections": 24, "acquire_timeout": "20s"},
        "log": {"level": "warning"},
    }


class Scenario:
    """One fault: its own work dir, sandbox and tier processes, torn down afterwards."""

    def __init__(self, root: Path, name: str, *, semi_sync: bool = False) -> None:
        self.name = name
        self.work = root / name
        self.work.mkdir()
        self.sb = sandbox.up(self.work / "db", replicas=1, semi_sync=semi_sync)
        self.procs: list[TierProcess] = []
        self.table = f"app.chaos_{uuid.uuid4().hex[:8]}"
        sandbox.sql(
            self.sb.primary, f"CREATE TABLE {self.table} (id BIGINT PRIMARY KEY, client INT)"
        )
        sandbox.wait_replicas_caught_up(self.sb)

    def tier(self, name: str, config: dict, **kw: Any) -> TierProcess:
        proc = TierProcess(self.work, name, config, **kw).start()
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        sandbox.down(self.work / "db")

    def rows_on(self, name: str) -> set[int]:
        rows = sandbox.sql(self.sb.server(name), f"SELECT id FROM {self.table}")
        return {int(r[0]) for r in rows}


def summary(
    load: Load, fault_at: float, rows: set[int], notes: str = "", **extra: Any
) -> dict[str, Any]:
    acked = load.acknowledged()
    given_up = load.given_up()
    errors = Counter(o.error for o in load.outcomes if o.error not in (None, "gave_up"))
    after = Counter(o.error for o in load.errors(issued_after=fault_at) if o.error != "gave_up")
    return {
        "commands": len(load.outcomes),
        "errors": dict(errors),
        "errors_issued_after_fault": dict(after),
        "stall_max_s": round(load.stall(fault_at), 3),
        "stall_p99_s": round(load.latency(fault_at, fault_at + 30, 99), 3),
        "acknowledged": len(acked),
        "acknowledged_lost": sum(1 for r in acked if r not in rows),
        "given_up": len(given_up),
        "ran_for_given_up": sum(1 for r in given_up if r in rows),
        "notes": notes,
        **extra,
    }


def kill_dead(pid: int) -> None:
    """kill -9, and return once every thread of the process is gone (its sockets closed by
    the kernel): a thread group leader shows as a zombie while other threads still exit."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
            states = [
                Path(f"/proc/{pid}/task/{t}/stat").read_text().split(") ", 1)[1][0] for t in tasks
            ]
        except (FileNotFoundError, IndexError, ProcessLookupError):
            return
        if all(state in "ZX" for state in states):
            return
        time.sleep(0.002)
    raise AssertionError(f"pid {pid} survived SIGKILL")


def promote(sb: sandbox.Sandbox, name: str) -> None:
    replica = sb.server(name)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = sandbox._replica_status(replica)
        applied = sandbox.sql(replica, "SELECT @@gtid_slave_pos")[0][0]
        if status.get("Gtid_IO_Pos", "") in ("", applied):
            break
        time.sleep(0.05)
    sandbox.sql(replica, "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF")


# --- the scenarios ------------------------------------------------------------------------------


def hung(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    sc = Scenario(root, "hung")
    try:
        a = sc.tier("remote-a", remote_config(sc.sb))
        b = sc.tier("remote-b", remote_config(sc.sb))
        local = sc.tier("local", local_config(a, b))
        load = Load("127.0.0.1", local.port, PASSWORD, sc.table, args.clients, think=0.01)
        marks: dict[str, float] = {}

        async def fault() -> None:
            await asyncio.sleep(3)
            marks["at"] = time.monotonic()
            a.signal(signal.SIGSTOP)
            await asyncio.sleep(args.hang)
            a.signal(signal.SIGCONT)

        asyncio.run(load.run(args.hang + 6, fault()))
        at = marks["at"]
        before, during = load.rate(at - 2, at), load.rate(at + 3, at + args.hang)
        return summary(
            load,
            at,
            sc.rows_on("db1"),
            f"{before:.0f}/s before, {during:.0f}/s from 3 s into the hang",
            rate_before=round(before),
            rate_hung=round(during),
        )
    finally:
        sc.close()


def dead(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    sc = Scenario(root, "dead", semi_sync=True)
    try:
        remote = sc.tier("remote", remote_config(sc.sb))
        local = sc.tier("local", local_config(remote))
        load = Load("127.0.0.1", local.port, PASSWORD, sc.table, args.clients, think=0.005)
        marks: dict[str, float] = {}

        async def fault() -> None:
            await asyncio.sleep(3)
            kill_dead(sc.sb.primary.pid)
            marks["at"] = time.monotonic()
            await asyncio.sleep(args.promote_after)
            await asyncio.to_thread(promote, sc.sb, "db2")
            marks["promoted"] = time.monotonic()

        asyncio.run(load.run(args.promote_after + 7, fault()))
        at = marks["at"]
        first = min(o.ended for o in load.outcomes if o.error is None and o.issued > at)
        return summary(
            load,
            at,
            sc.rows_on("db2"),
            f"first write {first - marks['promoted']:.2f}s after the promotion",
            first_write_after_promotion_s=round(first - marks["promoted"], 3),
        )
    finally:
        sc.close()


def vanished(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    if not NetNamespace.available():
        return {"skipped": "needs root and iproute2 for network namespaces"}
    sc = Scenario(root, "vanished")
    ns = NetNamespace("sluice-chaos", 63).create()
    try:
        inside = remote_config(
            sc.sb, servers=[{"name": "db1", "address": f"unix:{sc.sb.primary.socket}"}]
        )
        inside["upstream"].pop("monitor")  # only db1, by its socket: nothing to discover
        a = sc.tier("remote-a", inside, host=ns.inner_ip, netns=ns.name)
        b = sc.tier("remote-b", remote_config(sc.sb))
        local = sc.tier("local", local_config(a, b))
        load = Load("127.0.0.1", local.port, PASSWORD, sc.table, args.clients, think=0.01)
        marks: dict[str, float] = {}

        async def fault() -> None:
            await asyncio.sleep(3)
            marks["at"] = time.monotonic()
            await asyncio.to_thread(ns.down)

        asyncio.run(load.run(10, fault()))
        at = marks["at"]
        before, during = load.rate(at - 2, at), load.rate(at + 3, at + 7)
        return summary(
            load,
            at,
            sc.rows_on("db1"),
            f"{before:.0f}/s before, {during:.0f}/s from 3 s after the link went down",
            rate_before=round(before),
            rate_after=round(during),
        )
    finally:
        sc.close()
        ns.destroy()


def abandoned(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    sc = Scenario(root, "abandoned")
    try:
        remote = sc.tier("remote", remote_config(sc.sb))
        local = sc.tier("local", local_config(remote))
        from tests.rawclient import RawClient

        def running() -> int:
            rows = sandbox.sql(
                sc.sb.primary,
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE INFO LIKE 'SELECT BENCHMARK(4000000000%'",
            )
            return int(rows[0][0])

        clients = []
        for _ in range(args.abandon):
            client = RawClient.connect(("127.0.0.1", local.port), "app", PASSWORD, "app")
            client.command(b"\x03SELECT BENCHMARK(4000000000, SHA1('x'))")
            clients.append(client)
        deadline = time.monotonic() + 10
        while running() < args.abandon and time.monotonic() < deadline:
            time.sleep(0.05)
        started = running()
        for client in clients:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.sock.close()
        left = time.monotonic()
        while running() and time.monotonic() - left < 30:
            time.sleep(0.02)
        gone = time.monotonic() - left
        still = running()
        return {
            "queries": args.abandon,
            "running_when_clients_left": started,
            "still_running": still,
            "gone_after_s": round(gone, 3),
            "notes": f"{started} abandoned queries gone from the database {gone:.2f}s after "
            "their clients left",
        }
    finally:
        sc.close()


def stall(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    sc = Scenario(root, "stall")
    try:
        remote = sc.tier("remote", remote_config(sc.sb))
        local = sc.tier("local", local_config(remote))
        load = Load(
            "127.0.0.1",
            local.port,
            PASSWORD,
            sc.table,
            args.clients,
            think=0.01,
            give_up_after=1.0,
        )
        marks: dict[str, float] = {}

        async def fault() -> None:
            await asyncio.sleep(3)
            marks["at"] = time.monotonic()
            os.kill(sc.sb.primary.pid, signal.SIGSTOP)
            await asyncio.sleep(args.stall)
            os.kill(sc.sb.primary.pid, signal.SIGCONT)

        asyncio.run(load.run(args.stall + 6, fault()))
        return summary(load, marks["at"], sc.rows_on("db1"), "clients give up after 1 s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sc.sb.primary.pid, signal.SIGCONT)
        sc.close()


RUNNERS = {"hung": hung, "dead": dead, "vanished": vanished, "abandoned": abandoned, "stall": stall}


def report(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"{'fault':10} {'commands':>8} {'errors (after the fault)':>28} {'stall max':>9} "
        f"{'p99':>6} {'acked lost':>10} {'ran for given-up':>16}  notes"
    ]
    for name, r in results.items():
        if "skipped" in r:
            lines.append(f"{name:10} skipped: {r['skipped']}")
            continue
        if "commands" not in r:
            lines.append(
                f"{name:10} {'':>8} {'':>28} {'':>9} {'':>6} {'':>10} {'':>16}  {r['notes']}"
            )
            continue
        errs = ", ".join(f"{k}x{v}" for k, v in sorted(r["errors"].items())) or "none"
        after = sum(r["errors_issued_after_fault"].values())
        lines.append(
            f"{name:10} {r['commands']:>8} {errs + f' ({after})':>28} {r['stall_max_s']:>8.2f}s "
            f"{r['stall_p99_s']:>5.2f}s {r['acknowledged_lost']:>10} "
            f"{r['ran_for_given_up']:>5} of {r['given_up']:<8}  {r['notes']}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--hang", type=float, default=10.0, help="seconds a remote tier hangs")
    parser.add_argument("--promote-after", type=float, default=1.5)
    parser.add_argument("--stall", type=float, default=5.0, help="seconds the database stalls")
    parser.add_argument("--abandon", type=int, default=5, help="queries whose clients vanish")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    args = parser.parse_args()
    chosen = [x.strip() for x in args.only.split(",") if x.strip()]
    if unknown := [x for x in chosen if x not in SCENARIOS]:
        parser.error(f"--only: unknown scenario(s) {', '.join(unknown)}; known: {SCENARIOS}")
    root = Path(tempfile.mkdtemp(prefix="sluice-chaos-", dir="/tmp"))
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in chosen:
            print(f"{name} …", flush=True)
            results[name] = RUNNERS[name](root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = report(results)
    print("\n" + text)
    out = ROOT / "bench/results/chaos.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results, "table": text}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
