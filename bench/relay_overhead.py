"""sluice vs a plain byte relay vs direct: proxy CPU per query, side by side in one run.

One run starts a sandbox MariaDB, plain uvloop byte relays (bench/byte_relay.py: one hop, and
two chained) and sluice (`sluice run`: a remote tier alone, and a local tier in front of a
remote tier, each with a pool of --pool connections), then drives each with sysbench in
interleaved rounds. Throughput on a 2-core box swings ±15% run to run; the CPU time per query
of the proxy processes (from /proc, summed over a chain) is the stable figure, so the headline
is sluice's CPU/query over the relay's, for 1 tier and for 2 tiers over two relay hops.

The rows: point selects at 8 threads (no queueing), read_write at 16 threads with prepared
statements off and on, and the funnel: 512 threads on sluice's 24 connections (the relays open
512 database connections). Then the funnel's CPU per query at 64, 512 and 4,096 clients, with
the relay beside it as the control (what more clients cost any proxy on this machine). The CPU
is read at sysbench's per-second reports after the first second: logins are not per-query work.

The funnel runs twice. As fast as each target answers, its throughput falls as clients grow
(4,096 sysbench threads share the 2 cores with the proxies and the database), and with it how
many queries each wakeup of the event loop carries: the relay's CPU per query grows by 40-60%
from 64 to 4,096 clients for that alone. So the funnel runs again at one offered load for every
cell (sysbench --rate, --pace times the slowest cell's throughput): what remains of a growth
with clients is the proxy's own, the figure for "within 10%".

    .venv/bin/python bench/relay_overhead.py [--seconds 10] [--rounds 2] [--rows 1,4] [--tls]
                                             [--scaling 64,512,4096] [--pace 0.7]
Writes bench/results/relay_overhead.json. Needs sysbench (installed with apt when missing).

With --tls the clients' hop is also measured over TLS on the rows without a funnel: sluice with
`tls` configured beside a relay that terminates MySQL's in-band TLS with uvloop's own TLS
transport (bench/tls_relay.py), and the memory each costs per idle client connection (RSS
growth over --idle connections opened with PyMySQL, plain and TLS).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy import sandbox  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def ensure_command(name: str) -> str:
    """The path of `name`, installed with apt (package of the same name) when missing."""
    path = shutil.which(name)
    if path:
        return path
    if os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", name], check=False, stdout=subprocess.DEVNULL
        )
        if not shutil.which(name):
            subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
            subprocess.run(
                ["apt-get", "install", "-y", "-q", name], check=True, stdout=subprocess.DEVNULL
            )
        return shutil.which(name) or sys.exit(f"{name} did not install")
    sys.exit(f"bench: {name} is missing; install it (apt-get install {name}) and rerun")


def ensure_sysbench() -> str:
    return ensure_command("sysbench")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


RELAY_SCALING_MAX = int(os.environ.get("RELAY_SCALING_MAX", 4096))
"""The relay, the control of the funnel's scaling, runs up to this many clients (it opens a
database connection per client: the sandbox is started with room for them)."""


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds: sluice's Python is user time, the sockets' work system."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK  # utime, stime


def sysbench(
    binary: str,
    test: str,
    port: int,
    args: argparse.Namespace,
    threads: int,
    action: str = "run",
    extra: tuple[str, ...] = (),
    cwd: Path | None = None,
) -> str:
    cmd = sysbench_command(binary, test, port, args, threads, action, extra)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 180, cwd=cwd)
    if out.returncode != 0:
        raise RuntimeError(f"sysbench {action} on port {port} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def sysbench_command(
    binary: str,
    test: str,
    port: int,
    args: argparse.Namespace,
    threads: int,
    action: str,
    extra: tuple[str, ...],
) -> list[str]:
    return [
        binary,
        test,
        "--mysql-host=127.0.0.1",
        f"--mysql-port={port}",
        "--mysql-user=app",
        "--mysql-password=app-pass",
        "--mysql-db=app",
        "--tables=4",
        f"--table-size={args.table_size}",
        f"--threads={threads}",
        f"--time={args.seconds}",
        "--report-interval=0",
        *(extra or ("--db-ps-mode=disable",)),
        action,
    ]


def parse(output: str) -> dict[str, float]:
    queries = re.search(r"queries:\s+(\d+)\s+\(([\d.]+) per sec", output)
    lat = re.search(r"95th percentile:\s+([\d.]+)", output)
    avg = re.search(r"avg:\s+([\d.]+)", output)
    errors = re.search(r"ignored errors:\s+(\d+)", output)
    return {
        "queries": int(queries.group(1)),
        "qps": float(queries.group(2)),
        "p95_ms": float(lat.group(1)) if lat else 0.0,
        "avg_ms": float(avg.group(1)) if avg else 0.0,
        "errors": int(errors.group(1)) if errors else 0,
    }


ROWS = (
    # (row label, sysbench test, threads, prepared statements)
    ("point_select, 8 threads (no queueing)", "oltp_point_select", 8, False),
    ("read_write, 16 threads, ps off", "oltp_read_write", 16, False),
    ("read_write, 16 threads, ps on", "oltp_read_write", 16, True),
    ("point_select, 512 threads (funnel)", "oltp_point_select", 512, False),
    ("read_write, 512 threads (funnel)", "oltp_read_write", 512, False),
)
"""The table of issue 12: sluice beside a relay at every row; the funnel rows put 512 clients
on sluice's 24 connections while the relay opens 512 database connections."""

SCALING = (64, 512, 4096)
"""Clients for the funnel's CPU per query at growing queues (point selects, sluice only)."""


class Target:
    """Something sysbench connects to: a port and the processes whose CPU a query costs."""

    def __init__(self, name: str, port: int, pids: list[int]) -> None:
        self.name, self.port, self.pids = name, port, pids

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def user_cpu(self) -> float:
        return sum(cpu_split(pid)[0] for pid in self.pids)


def spawn_relay(procs: list[subprocess.Popen], host: str, port: int) -> tuple[int, int]:
    listen = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench/byte_relay.py"), str(listen), host, str(port)]
    )
    procs.append(proc)
    wait_port(listen)
    return listen, proc.pid


def tier_config(
    work: Path, name: str, tier: str, upstream: str, pool: int, acquire_timeout: int = 60
) -> tuple[Path, int]:
    """A `sluice run` config for a benchmark tier on a free port: (its path, the port)."""
    listen = free_port()
    config = work / f"{name}.yaml"
    config.write_text(
        json.dumps(
            {
                "tier": tier,
                "listen": [f"127.0.0.1:{listen}"],
                "users": [{"name": "app", "password": "app-pass"}],
                "upstream": {"servers": [{"name": "up1", "address": upstream}]},
                "pool": {"max_connections": pool, "acquire_timeout": acquire_timeout},
                "log": {"level": "warning"},
            }
        )
    )
    return config, listen


def spawn_tier(
    procs: list[subprocess.Popen], work: Path, name: str, tier: str, upstream: str, pool: int
) -> tuple[int, int]:
    config, listen = tier_config(work, name, tier, upstream, pool)
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "run", "-c", str(config)], cwd=ROOT)
    procs.append(proc)
    wait_port(listen)
    return listen, proc.pid


def start_targets(
    work: Path, db: sandbox.SandboxServer, procs: list[subprocess.Popen], pool: int
) -> dict[str, Target]:
    """direct; a relay and sluice's remote tier (1 hop); two chained relays and a local tier
    in front of a remote tier (2 hops)."""
    address = f"{db.host}:{db.port}"
    relay, relay_pid = spawn_relay(procs, db.host, db.port)
    inner, inner_pid = spawn_relay(procs, db.host, db.port)
    outer, outer_pid = spawn_relay(procs, "127.0.0.1", inner)
    one, one_pid = spawn_tier(procs, work, "sluice", "remote", address, pool)
    remote, remote_pid = spawn_tier(procs, work, "remote", "remote", address, pool)
    local, local_pid = spawn_tier(procs, work, "local", "local", f"127.0.0.1:{remote}", pool)
    return {
        "direct": Target("direct", db.port, [db.pid]),
        "relay": Target("relay", relay, [relay_pid]),
        "sluice": Target("sluice", one, [one_pid]),
        "relay x2": Target("relay x2", outer, [outer_pid, inner_pid]),
        "sluice x2": Target("sluice x2", local, [local_pid, remote_pid]),
    }


INTERVAL = re.compile(r"^\[ (\d+)s \] .* qps: ([\d.]+)")
"""sysbench's per-second report line: the second it closes and its queries per second."""


def measure(
    binary: str,
    target: Target,
    test: str,
    threads: int,
    ps: bool,
    args: argparse.Namespace,
    tls_files: Path | None = None,
    rate: int = 0,
) -> dict[str, float]:
    """One sysbench run against `target`: its summary, and the proxy's CPU per query in
    the steady state. The CPU is read at sysbench's per-second reports, from the end of the
    first second to the last report: the logins of thousands of clients (measured by
    bench/connection_limit.py) and the ramp-up stay out of a figure meant per query.
    `rate`: events per second offered (0: as fast as the target answers)."""
    extra = ["--db-ps-mode=auto" if ps else "--db-ps-mode=disable"]
    if tls_files is not None:
        extra.append("--mysql-ssl=on")
    if rate:
        extra.append(f"--rate={rate}")
    cmd = sysbench_command(binary, test, target.port, args, threads, "run", tuple(extra))
    cmd[cmd.index("--report-interval=0")] = "--report-interval=1"
    samples: list[tuple[float, float, float]] = []  # (cpu, user cpu, queries so far)
    queries = 0.0
    lines = []
    # --mysql-ssl=on reads cacert.pem, client-cert.pem and client-key.pem from its cwd.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tls_files
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            m = INTERVAL.match(line)
            if m:
                queries += float(m.group(2))  # (each report covers one second)
                samples.append((target.cpu(), target.user_cpu(), queries))
        proc.wait(timeout=args.seconds + 180)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    if proc.returncode != 0:
        raise RuntimeError(f"sysbench run on port {target.port} failed:\n{out}")
    if len(samples) < 3:
        raise RuntimeError(f"sysbench printed {len(samples)} reports; run longer (--seconds)")
    (cpu0, user0, q0), (cpu1, user1, q1) = samples[0], samples[-1]
    r = parse(out)
    r["cpu_us_per_query"] = (cpu1 - cpu0) / (q1 - q0) * 1e6
    r["user_us_per_query"] = (user1 - user0) / (q1 - q0) * 1e6
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--table-size", type=int, default=10000)
    parser.add_argument("--pool", type=int, default=24, help="each sluice tier's pool")
    parser.add_argument(
        "--rows", default="", help="comma-separated row numbers (1-5) to run (0: none); default all"
    )
    parser.add_argument(
        "--scaling", default=",".join(map(str, SCALING)), help="funnel clients ('' for none)"
    )
    parser.add_argument(
        "--pace",
        type=float,
        default=0.7,
        help="the funnel again at this fraction of its slowest cell's throughput (0: not)",
    )
    parser.add_argument("--tls", action="store_true", help="also measure the clients' hop over TLS")
    parser.add_argument("--idle", type=int, default=300, help="idle connections for memory")
    args = parser.parse_args()
    binary = ensure_sysbench()
    rows = [ROWS[int(i) - 1] for i in args.rows.split(",") if i != "0"] if args.rows else list(ROWS)
    scaling = [int(n) for n in args.scaling.split(",") if n]
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-", dir="/tmp"))
    procs: list[subprocess.Popen] = []
    # Direct and relay runs open a database connection per client (closing ones linger).
    relay_scaling = [n for n in scaling if n <= RELAY_SCALING_MAX]
    widest = max([threads for _, _, threads, _ in rows] + relay_scaling + [16])
    limit = max(2 * widest + 200, args.idle + 100 if args.tls else 0)
    sb = sandbox.up(work / "db", replicas=0, max_connections=limit)
    try:
        db = sb.primary
        targets = start_targets(work, db, procs, args.pool)
        tls_files: Path | None = None
        tls_targets: dict[str, Target] = {}
        if args.tls:
            tls_files, tls_targets = start_tls_targets(work, db, procs)
        table: list[dict] = []
        prepared: set[str] = set()
        for label, test, threads, ps in rows:
            if test not in prepared:
                sysbench(binary, test, db.port, args, threads=8, action="prepare")
                prepared.add(test)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            if not (threads > 64 or ps):
                runs.update({name: [] for name in tls_targets})
            for _ in range(args.rounds):
                for name in runs:
                    target = targets.get(name) or tls_targets[name]
                    tls = tls_files if name in tls_targets else None
                    runs[name].append(measure(binary, target, test, threads, ps, args, tls))
            table.append({"row": label, "test": test, "threads": threads, "ps": ps, "runs": runs})
            print_row(table[-1])
        funnel: dict[str, dict[int, list[dict[str, float]]]] = {}
        paced: dict[str, dict[int, list[dict[str, float]]]] = {}
        rate = 0
        if scaling:
            if "oltp_point_select" not in prepared:
                sysbench(binary, "oltp_point_select", db.port, args, threads=8, action="prepare")
            funnel = scaling_runs(binary, targets, scaling, relay_scaling, args)
            if args.pace:
                # The same clients at one offered load, below what the slowest cell served.
                slowest = min(
                    mean(runs, "qps") for cells in funnel.values() for runs in cells.values()
                )
                rate = int(args.pace * slowest)
                paced = scaling_runs(binary, targets, scaling, relay_scaling, args, rate)
        memory = idle_memory({**targets, **tls_targets}, args.idle, tls_files) if args.tls else {}
        report(table, funnel, paced, rate, args, memory)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        sandbox.down(work / "db")
        shutil.rmtree(work, ignore_errors=True)
    return 0


def scaling_runs(
    binary: str,
    targets: dict[str, Target],
    scaling: list[int],
    relay_scaling: list[int],
    args: argparse.Namespace,
    rate: int = 0,
) -> dict[str, dict[int, list[dict[str, float]]]]:
    """Point selects by the funnel's clients, for the relay (the control: it opens a database
    connection per client, up to RELAY_SCALING_MAX), sluice and sluice x2."""
    funnel: dict[str, dict[int, list[dict[str, float]]]] = {}
    for name in ("relay", "sluice", "sluice x2"):
        counts = relay_scaling if name == "relay" else scaling
        funnel[name] = {n: [] for n in counts}
        for _ in range(args.rounds):
            for n in counts:
                funnel[name][n].append(
                    measure(binary, targets[name], "oltp_point_select", n, False, args, rate=rate)
                )
    return funnel


def scaling_report(funnel: dict, title: str) -> dict[str, float]:
    """Print CPU per query by clients for each target, and over the relay's (the control);
    return each target's max/min."""
    spread: dict[str, float] = {}
    if not funnel:
        return spread
    print(f"\n{title}")
    for name, by_clients in funnel.items():
        cells = {n: mean(runs, "cpu_us_per_query") for n, runs in by_clients.items()}
        spread[name] = max(cells.values()) / min(cells.values())
        line = "  ".join(
            f"{n} clients {cells[n]:.1f} µs "
            f"(user {mean(by_clients[n], 'user_us_per_query'):.1f}, "
            f"{mean(by_clients[n], 'qps'):.0f} q/s, "
            f"{sum(r['errors'] for r in by_clients[n])} errors)"
            for n in cells
        )
        print(f"  {name:10} {line}  max/min {spread[name]:.2f}")
    relay = {n: mean(r, "cpu_us_per_query") for n, r in funnel.get("relay", {}).items()}
    for name in ("sluice", "sluice x2"):
        if name not in funnel or not relay:
            continue
        hops = 2 if name == "sluice x2" else 1  # (two relay hops cost about twice one)
        over = {
            n: mean(r, "cpu_us_per_query") / (hops * relay[n])
            for n, r in funnel[name].items()
            if n in relay
        }
        cells = "  ".join(f"{n} clients {x:.2f}" for n, x in over.items())
        print(
            f"  {name} over {hops} x relay (the control): {cells}  "
            f"max/min {max(over.values()) / min(over.values()):.2f}"
        )
    return spread


def start_tls_targets(
    work: Path, db: sandbox.SandboxServer, procs: list[subprocess.Popen]
) -> tuple[Path, dict[str, Target]]:
    """A TLS-terminating relay and a sluice tier with `tls`, on a test CA's certificates."""
    from tests.certs import make_certs

    certs = make_certs(work / "certs")
    files = work / "sysbench-tls"
    files.mkdir()
    shutil.copy(certs.ca, files / "cacert.pem")
    shutil.copy(certs.client.cert, files / "client-cert.pem")
    shutil.copy(certs.client.key, files / "client-key.pem")
    relay_port, sluice_port = free_port(), free_port()
    relay = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench/tls_relay.py"),
            str(relay_port),
            db.host,
            str(db.port),
            certs.server.cert,
            certs.server.key,
        ]
    )
    procs.append(relay)
    path = work / "sluice-tls.yaml"
    path.write_text(
        json.dumps(
            {
                "tier": "remote",
                "listen": [f"127.0.0.1:{sluice_port}"],
                "users": [{"name": "app", "password": "app-pass"}],
                "upstream": {"servers": [{"name": "db1", "address": f"{db.host}:{db.port}"}]},
                "tls": {"cert": certs.server.cert, "key": certs.server.key},
                "log": {"level": "warning"},
            }
        )
    )
    tier = subprocess.Popen([sys.executable, "-m", "proxy.cli", "run", "-c", str(path)], cwd=ROOT)
    procs.append(tier)
    wait_port(relay_port)
    wait_port(sluice_port)
    return files, {
        "relay-tls": Target("relay-tls", relay_port, [relay.pid]),
        "sluice-tls": Target("sluice-tls", sluice_port, [tier.pid]),
    }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def idle_memory(targets: dict[str, Target], count: int, tls_files: Path | None) -> dict[str, float]:
    """KiB of the proxy's RSS per idle client connection (PyMySQL, TLS for *-tls)."""
    import pymysql

    out: dict[str, float] = {}
    for name in ("relay", "sluice", "relay-tls", "sluice-tls"):
        target = targets[name]
        ssl = {"ca": str(tls_files / "cacert.pem")} if name.endswith("-tls") else None
        before = rss_kib(target.pids[0])
        conns = [
            pymysql.connect(
                host="127.0.0.1",
                port=target.port,
                user="app",
                password="app-pass",
                database="app",
                ssl=ssl,
                ssl_disabled=ssl is None,
            )
            for _ in range(count)
        ]
        for conn in conns:  # every session has done a round trip: its buffers exist
            conn.ping()
        time.sleep(0.5)
        out[name] = (rss_kib(target.pids[0]) - before) / count
        for conn in conns:
            conn.close()
        time.sleep(0.5)
    return out


def mean(runs: list[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


def print_row(row: dict) -> None:
    runs = row["runs"]
    print(f"\n{row['row']}  ({row['test']}, CPU/query of the proxy processes; direct: mariadbd)")
    print(
        f"  {'target':10} {'QPS':>9} {'vs direct':>9} {'p95 ms':>7} {'CPU µs/q':>9} {'errors':>6}"
    )
    direct = mean(runs["direct"], "qps")
    for name, r in runs.items():
        print(
            f"  {name:10} {mean(r, 'qps'):9.0f} {mean(r, 'qps') / direct:9.2f} "
            f"{mean(r, 'p95_ms'):7.2f} {mean(r, 'cpu_us_per_query'):9.1f} "
            f"{sum(x['errors'] for x in r):6d}"
        )
    sys.stdout.flush()


def ratio(runs: dict, a: str, b: str) -> float:
    return mean(runs[a], "cpu_us_per_query") / mean(runs[b], "cpu_us_per_query")


def report(
    table: list[dict],
    funnel: dict,
    paced: dict,
    rate: int,
    args: argparse.Namespace,
    memory: dict[str, float],
) -> None:
    print(
        f"\nseconds={args.seconds} rounds={args.rounds} pool={args.pool} per sluice tier "
        "(the relays open a database connection per client)"
    )
    print(
        "\n| workload | relay CPU/query | sluice 1 tier | ratio | relay x2 | sluice 2 tiers "
        "| ratio |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    summary = []
    for row in table:
        runs = row["runs"]
        one, two = ratio(runs, "sluice", "relay"), ratio(runs, "sluice x2", "relay x2")
        print(
            f"| {row['row']} | {mean(runs['relay'], 'cpu_us_per_query'):.1f} µs "
            f"| {mean(runs['sluice'], 'cpu_us_per_query'):.1f} µs | {one:.2f}x "
            f"| {mean(runs['relay x2'], 'cpu_us_per_query'):.1f} µs "
            f"| {mean(runs['sluice x2'], 'cpu_us_per_query'):.1f} µs | {two:.2f}x |"
        )
        entry = {
            **row,
            "sluice_over_relay_cpu": one,
            "sluice2_over_relay2_cpu": two,
            "sluice_over_relay_qps": mean(runs["sluice"], "qps") / mean(runs["relay"], "qps"),
        }
        if "sluice-tls" in runs:
            entry["sluice_tls_over_sluice_cpu"] = ratio(runs, "sluice-tls", "sluice")
            entry["sluice_tls_over_relay_tls_cpu"] = ratio(runs, "sluice-tls", "relay-tls")
        summary.append(entry)
    worst = max(
        [max(e["sluice_over_relay_cpu"], e["sluice2_over_relay2_cpu"]) for e in summary] or [0]
    )
    print(f"\nworst ratio {worst:.2f} (target ≤ 1.30 on every row)")
    tls_rows = [e for e in summary if "sluice_tls_over_sluice_cpu" in e]
    for e in tls_rows:
        print(
            f"TLS, {e['row']}: sluice-tls / sluice CPU per query = "
            f"{e['sluice_tls_over_sluice_cpu']:.2f}; sluice-tls / relay-tls = "
            f"{e['sluice_tls_over_relay_tls_cpu']:.2f}"
        )
    spread = scaling_report(
        funnel, "funnel CPU per query by clients (point selects, as fast as each answers)"
    )
    paced_spread = scaling_report(
        paced,
        f"the same at {rate} queries/s offered to every cell (sysbench --rate; the figure for "
        "the target: within 10%)",
    )
    if memory:
        print("\nmemory per idle client connection (proxy RSS growth):")
        for name, kib in memory.items():
            print(f"  {name:10} {kib:7.1f} KiB")
    out = ROOT / "bench/results/relay_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "table": summary,
                "funnel": {k: {str(n): r for n, r in v.items()} for k, v in funnel.items()},
                "funnel_spread": spread,
                "paced_rate": rate,
                "paced": {k: {str(n): r for n, r in v.items()} for k, v in paced.items()},
                "paced_spread": paced_spread,
                "memory_kib": memory,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    sys.exit(main())
