"""User-space instructions per query in the real proxy processes: sluice vs a plain byte relay.

relay_overhead.py's CPU per query is what users pay, but it swings run to run and half of it
is the kernel's, the same for any proxy. This runs the same processes (bench/byte_relay.py,
one hop and two chained; `sluice run`, a remote tier alone and a local tier in front of a
remote tier) under `valgrind --tool=callgrind`, drives each with sysbench for a fixed number
of events, and counts the instructions the processes executed in user space (Python, uvloop,
libc) per query: a figure that repeats to a percent or two, so a change to the data path
shows its effect in one run. Each cell is the difference of two runs (a third of --events,
then all of them) over the difference in queries: sysbench's logins and its threads' prepares
cost both runs the same and drop out, as relay_overhead.py leaves them out of its figure.

    .venv/bin/python bench/instructions.py [--events 3000] [--rows 1,2,3]
Writes bench/results/instructions.json. Needs sysbench and valgrind (installed with apt
when missing). Takes about two minutes.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from relay_overhead import (  # noqa: E402
    ensure_command,
    ensure_sysbench,
    free_port,
    sysbench_command,
    tier_config,
    wait_port,
)

from proxy import sandbox  # noqa: E402

ROWS = (
    # (label, sysbench test, threads, prepared statements, events per 1000 --events)
    ("point_select, 8 threads", "oltp_point_select", 8, False, 1000),
    ("read_write, 16 threads, ps off", "oltp_read_write", 16, False, 60),
    ("read_write, 16 threads, ps on", "oltp_read_write", 16, True, 60),
)
"""relay_overhead.py's rows without a funnel (under callgrind 512 clients would mostly measure
valgrind's scheduler). A read_write event is 18 queries."""


class Counted:
    """A proxy process under callgrind."""

    def __init__(self, work: Path, name: str, argv: list[str], port: int) -> None:
        self.out = work / f"callgrind.{name}.out"
        self.port = port
        self.proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--dump-instr=no",
                f"--callgrind-out-file={self.out}",
                *argv,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(port, timeout=180)

    def zero(self) -> None:
        subprocess.run(
            ["callgrind_control", "-z", str(self.proc.pid)], check=True, capture_output=True
        )

    def instructions(self) -> int:
        """Instructions since the last zero (callgrind_control dumps them to a new file)."""
        before = set(glob.glob(f"{self.out}*"))
        subprocess.run(
            ["callgrind_control", "-d", str(self.proc.pid)], check=True, capture_output=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            new = set(glob.glob(f"{self.out}*")) - before
            for path in new:
                m = re.search(r"^summary:\s+(\d+)", Path(path).read_text(), re.M)
                if m:
                    return int(m.group(1))
            time.sleep(0.2)
        raise RuntimeError(f"callgrind wrote no dump for {self.out}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def relay(work: Path, name: str, host: str, port: int) -> Counted:
    listen = free_port()
    argv = [sys.executable, str(ROOT / "bench/byte_relay.py"), str(listen), host, str(port)]
    return Counted(work, name, argv, listen)


def tier(work: Path, name: str, role: str, upstream: str, pool: int) -> Counted:
    config, listen = tier_config(work, name, role, upstream, pool, acquire_timeout=120)
    argv = [sys.executable, "-m", "proxy.cli", "run", "-c", str(config)]
    return Counted(work, name, argv, listen)


def sysbench(
    binary: str, test: str, port: int, threads: int, ps: bool, events: int, action: str = "run"
) -> int:
    """Queries sysbench ran (its own count): `events` of them, however long they take."""
    shape = argparse.Namespace(seconds=0, table_size=10000)
    ps_mode = "--db-ps-mode=auto" if ps else "--db-ps-mode=disable"
    cmd = sysbench_command(
        binary, test, port, shape, threads, action, (f"--events={events}", ps_mode)
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"sysbench {action} on port {port} failed:\n{out.stdout}\n{out.stderr}")
    m = re.search(r"queries:\s+(\d+)", out.stdout)
    return int(m.group(1)) if m else 0  # (prepare prints none)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--events", type=int, default=3000, help="point selects measured per target"
    )
    parser.add_argument("--rows", default="", help="comma-separated row numbers (1-3); default all")
    parser.add_argument("--pool", type=int, default=24, help="each sluice tier's pool")
    args = parser.parse_args()
    binary = ensure_sysbench()
    ensure_command("valgrind")  # (callgrind_control comes with it)
    rows = [ROWS[int(i) - 1] for i in args.rows.split(",")] if args.rows else list(ROWS)
    work = Path(tempfile.mkdtemp(prefix="sluice-instr-", dir="/tmp"))
    sb = sandbox.up(work / "db", replicas=0, max_connections=300)
    procs: list[Counted] = []
    try:
        db = sb.primary
        address = f"{db.host}:{db.port}"
        for test in {test for _, test, _, _, _ in rows}:
            sysbench(binary, test, db.port, 8, False, 0, action="prepare")
        one = relay(work, "relay", db.host, db.port)
        inner = relay(work, "inner", db.host, db.port)
        outer = relay(work, "outer", "127.0.0.1", inner.port)
        lone = tier(work, "sluice", "remote", address, args.pool)
        remote = tier(work, "remote", "remote", address, args.pool)
        local = tier(work, "local", "local", f"127.0.0.1:{remote.port}", args.pool)
        procs += [one, inner, outer, lone, remote, local]
        targets = {
            "relay": (one.port, [one]),
            "sluice": (lone.port, [lone]),
            "relay x2": (outer.port, [outer, inner]),
            "sluice x2": (local.port, [local, remote]),
        }
        table = []
        for label, test, threads, ps, per_thousand in rows:
            events = max(1, args.events * per_thousand // 1000)
            cells: dict[str, float] = {}
            hops: dict[str, list[float]] = {}  # per process of a chain, the client's side first
            for name, (port, counted) in targets.items():
                sysbench(binary, test, port, threads, ps, max(1, events // 5))  # warm-up
                counts = []
                for n in (events // 3, events):
                    for c in counted:
                        c.zero()
                    queries = sysbench(binary, test, port, threads, ps, n)
                    counts.append(([c.instructions() for c in counted], queries))
                (i1, q1), (i2, q2) = counts
                hops[name] = [(b - a) / (q2 - q1) for a, b in zip(i1, i2, strict=True)]
                cells[name] = sum(hops[name])
            table.append(
                {
                    "row": label,
                    "test": test,
                    "threads": threads,
                    "ps": ps,
                    "instructions": cells,
                    "per_process": hops,
                }
            )
            r, s, r2, s2 = (cells[n] / 1e3 for n in ("relay", "sluice", "relay x2", "sluice x2"))
            local, remote = (x / 1e3 for x in hops["sluice x2"])
            print(
                f"{label:32s} relay {r:6.1f}k  sluice {s:6.1f}k ({s / r:.1f}x)  "
                f"relay x2 {r2:6.1f}k  sluice x2 {s2:6.1f}k ({s2 / r2:.1f}x; "
                f"local {local:.1f}k + remote {remote:.1f}k)"
            )
            sys.stdout.flush()
        print("(user-space instructions per query, summed over each chain's processes)")
        results = ROOT / "bench/results"
        results.mkdir(exist_ok=True)
        (results / "instructions.json").write_text(
            json.dumps({"events": args.events, "rows": table}, indent=2)
        )
        print(f"wrote {results / 'instructions.json'}")
    finally:
        for c in procs:
            c.stop()
        sandbox.down(work / "db")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
