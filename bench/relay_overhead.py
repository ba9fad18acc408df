"""sluice vs a plain byte relay vs direct: throughput and proxy CPU per query, side by side.

One run starts a sandbox MariaDB, a plain uvloop byte relay (bench/byte_relay.py) and a sluice
tier (`sluice run`), then drives each with sysbench in interleaved rounds. Throughput on a
2-core box swings ±15% run to run; CPU time per query of the proxy process (from /proc) is the
stable figure, so the headline ratio is sluice's CPU/query over the relay's.

    .venv/bin/python bench/relay_overhead.py [--threads 16] [--seconds 10] [--rounds 2] [--tls]
Writes bench/results/relay_overhead.json. Needs sysbench (installed with apt when missing).

With --tls the clients' hop is also measured over TLS: sluice with `tls` configured beside a
relay that terminates MySQL's in-band TLS with uvloop's own TLS transport
(bench/tls_relay.py), CPU per query for both, and the memory each costs per idle client
connection (RSS growth over --idle connections opened with PyMySQL, plain and TLS).
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


def ensure_sysbench() -> str:
    path = shutil.which("sysbench")
    if path:
        return path
    if os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "sysbench"], check=False, stdout=subprocess.DEVNULL
        )
        if not shutil.which("sysbench"):
            subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "sysbench"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        return shutil.which("sysbench") or sys.exit("sysbench did not install")
    sys.exit("bench: sysbench is missing; install it (apt-get install sysbench) and rerun")


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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def sysbench(
    binary: str,
    test: str,
    port: int,
    args: argparse.Namespace,
    action: str = "run",
    extra: tuple[str, ...] = (),
    cwd: Path | None = None,
) -> str:
    cmd = [
        binary,
        test,
        "--mysql-host=127.0.0.1",
        f"--mysql-port={port}",
        "--mysql-user=app",
        "--mysql-password=app-pass",
        "--mysql-db=app",
        "--tables=4",
        f"--table-size={args.table_size}",
        f"--threads={args.threads}",
        f"--time={args.seconds}",
        "--report-interval=0",
        "--db-ps-mode=disable",
        *extra,
        action,
    ]
    # --mysql-ssl=on reads cacert.pem, client-cert.pem and client-key.pem from its cwd.
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 120, cwd=cwd)
    if out.returncode != 0:
        raise RuntimeError(f"sysbench {action} on port {port} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--table-size", type=int, default=10000)
    parser.add_argument("--tests", default="oltp_point_select,oltp_read_write")
    parser.add_argument("--tls", action="store_true", help="also measure the clients' hop over TLS")
    parser.add_argument("--idle", type=int, default=300, help="idle connections for memory")
    args = parser.parse_args()
    binary = ensure_sysbench()
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-", dir="/tmp"))
    procs: list[subprocess.Popen] = []
    # A relay opens a database connection per client: the idle-memory step needs --idle more.
    limit = max(args.threads * 4 + 50, args.idle + 100 if args.tls else 0)
    sb = sandbox.up(work / "db", replicas=0, max_connections=limit)
    try:
        db = sb.primary
        relay_port, sluice_port = free_port(), free_port()
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "bench/byte_relay.py"),
                    str(relay_port),
                    db.host,
                    str(db.port),
                ]
            )
        )
        config = work / "sluice.yaml"
        config.write_text(
            json.dumps(
                {
                    "tier": "remote",
                    "listen": [f"127.0.0.1:{sluice_port}"],
                    "users": [{"name": "app", "password": "app-pass"}],
                    "upstream": {"servers": [{"name": "db1", "address": f"{db.host}:{db.port}"}]},
                    "log": {"level": "warning"},
                }
            )
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "run", "-c", str(config)], cwd=ROOT
            )
        )
        wait_port(relay_port)
        wait_port(sluice_port)
        targets = {
            "direct": (db.port, db.pid),
            "relay": (relay_port, procs[0].pid),
            "sluice": (sluice_port, procs[1].pid),
        }
        tls_files: Path | None = None
        if args.tls:
            tls_files, tls_targets = start_tls_targets(work, db, config, procs)
            targets.update(tls_targets)
        results: dict[str, dict[str, list[dict[str, float]]]] = {}
        for test in args.tests.split(","):
            sysbench(binary, test, db.port, args, "prepare")
            results[test] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (port, pid) in targets.items():
                    tls = name.endswith("-tls")
                    before = cpu_seconds(pid)
                    out = sysbench(
                        binary,
                        test,
                        port,
                        args,
                        extra=("--mysql-ssl=on",) if tls else (),
                        cwd=tls_files if tls else None,
                    )
                    r = parse(out)
                    r["cpu_us_per_query"] = (cpu_seconds(pid) - before) / r["queries"] * 1e6
                    results[test][name].append(r)
            sysbench(binary, test, db.port, args, "cleanup")
        memory = idle_memory(targets, args.idle, tls_files) if args.tls else {}
        report(results, args, memory)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        sandbox.down(work / "db")
        shutil.rmtree(work, ignore_errors=True)
    return 0


def start_tls_targets(
    work: Path, db: sandbox.SandboxServer, plain_config: Path, procs: list[subprocess.Popen]
) -> tuple[Path, dict[str, tuple[int, int]]]:
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
    config = json.loads(plain_config.read_text())
    config["listen"] = [f"127.0.0.1:{sluice_port}"]
    config["tls"] = {"cert": certs.server.cert, "key": certs.server.key}
    path = work / "sluice-tls.yaml"
    path.write_text(json.dumps(config))
    tier = subprocess.Popen([sys.executable, "-m", "proxy.cli", "run", "-c", str(path)], cwd=ROOT)
    procs.append(tier)
    wait_port(relay_port)
    wait_port(sluice_port)
    return files, {"relay-tls": (relay_port, relay.pid), "sluice-tls": (sluice_port, tier.pid)}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def idle_memory(
    targets: dict[str, tuple[int, int]], count: int, tls_files: Path | None
) -> dict[str, float]:
    """KiB of the proxy's RSS per idle client connection (PyMySQL, TLS for *-tls)."""
    import pymysql

    out: dict[str, float] = {}
    for name, (port, pid) in targets.items():
        if name == "direct":
            continue
        ssl = {"ca": str(tls_files / "cacert.pem")} if name.endswith("-tls") else None
        before = rss_kib(pid)
        conns = [
            pymysql.connect(
                host="127.0.0.1",
                port=port,
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
        out[name] = (rss_kib(pid) - before) / count
        for conn in conns:
            conn.close()
        time.sleep(0.5)
    return out


def report(results: dict, args: argparse.Namespace, memory: dict[str, float]) -> None:
    summary: dict[str, dict] = {}
    print(
        f"\nthreads={args.threads} seconds={args.seconds} rounds={args.rounds} "
        f"(CPU/query of the proxy process; for direct, of mariadbd)"
    )
    for test, by_target in results.items():

        def mean(name: str, key: str, by=by_target) -> float:
            runs = by[name]
            return sum(r[key] for r in runs) / len(runs)

        print(f"\n{test}")
        print(
            f"  {'target':8} {'QPS':>9} {'vs direct':>9} {'p95 ms':>7} {'CPU µs/q':>9} "
            f"{'errors':>6}"
        )
        for name in by_target:
            print(
                f"  {name:8} {mean(name, 'qps'):9.0f} "
                f"{mean(name, 'qps') / mean('direct', 'qps'):9.2f} "
                f"{mean(name, 'p95_ms'):7.2f} {mean(name, 'cpu_us_per_query'):9.1f} "
                f"{sum(r['errors'] for r in by_target[name]):6d}"
            )
        ratio = mean("sluice", "cpu_us_per_query") / mean("relay", "cpu_us_per_query")
        print(f"  sluice CPU per query / relay CPU per query = {ratio:.2f}  (target ≤ 1.30)")
        summary[test] = {
            "runs": by_target,
            "sluice_over_relay_cpu": ratio,
            "sluice_over_direct_qps": mean("sluice", "qps") / mean("direct", "qps"),
            "relay_over_direct_qps": mean("relay", "qps") / mean("direct", "qps"),
        }
        if "sluice-tls" in by_target:
            tls_cost = mean("sluice-tls", "cpu_us_per_query") / mean("sluice", "cpu_us_per_query")
            vs_relay = mean("sluice-tls", "cpu_us_per_query") / mean(
                "relay-tls", "cpu_us_per_query"
            )
            print(
                f"  TLS: sluice-tls / sluice CPU per query = {tls_cost:.2f}; "
                f"sluice-tls / relay-tls = {vs_relay:.2f}"
            )
            summary[test]["sluice_tls_over_sluice_cpu"] = tls_cost
            summary[test]["sluice_tls_over_relay_tls_cpu"] = vs_relay
    if memory:
        print("\nmemory per idle client connection (proxy RSS growth):")
        for name, kib in memory.items():
            print(f"  {name:10} {kib:7.1f} KiB")
    out = ROOT / "bench/results/relay_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"args": vars(args), "results": summary, "memory_kib": memory}, indent=2)
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    sys.exit(main())
