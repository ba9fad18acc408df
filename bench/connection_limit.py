"""The funnel against a database connection limit: N app clients direct vs through one sluice tier.

One run starts a sandbox MariaDB with a small ``max_connections`` (``--db-limit``) and a table,
then runs two phases, one after the other, with the same workload:

- **direct**: N app clients connect straight to MariaDB with aiomysql, all at once. Only about
  ``--db-limit`` of them get in; the rest get error 1040 (Too many connections), retry a few
  times with backoff (each 1040 is counted) and then count as failed clients. Each attempt
  gets 10 s: in a storm MariaDB's small accept queue (``back_log``) overflows, and a client
  whose handshake ACK the kernel dropped sits in ESTABLISHED waiting for a greeting that only
  comes after a SYN-ACK retransmit, if at all; such attempts count as ``timeout``.
- **sluice**: the same N clients connect to one sluice tier (``sluice run`` in a subprocess,
  ``pool.max_connections = --cap``, ``acquire_timeout`` 30s), which funnels them onto at most
  ``--cap`` database connections. No client should see any error.

Once every client has connected (or given up), each connected client runs a closed loop for
``--seconds``: 50% autocommit point selects, 20% autocommit inserts, 30% short transactions
(BEGIN; UPDATE one row; SELECT it; COMMIT). Every statement is timed (through sluice that
includes waiting for a pooled connection), and every answer is checked (a point select must
return the row it asked for), so replies delivered to the wrong client would show. By default
there is no pause between requests, so through sluice N clients queue for ``--cap``
connections and statement latency is mostly that queue (Little's law: about N / QPS);
``--think-ms`` adds a mean pause between a client's requests, closer to real app connections
that are mostly idle.

While a phase runs, a root connection samples the database's ``Threads_connected`` every 50 ms
and keeps the maximum. It connects through MariaDB's ``extra_port``, so it neither takes one of
the scarce ``max_connections`` slots nor shows in ``Threads_connected``: the figure is exactly
the app's (or sluice's) connections. (Direct can show a little over ``--db-limit``: MariaDB
admits one connection beyond ``max_connections``, the slot kept for SUPER users, and an app
connection holds it until it is refused with 1040 after logging in.) The same sampler reads
sluice's RSS (VmRSS) before any client connects, once all are connected, and at its peak;
memory per client connection is (peak RSS - RSS before) / clients connected. CPU time of the
load generator, sluice and mariadbd over the measured window is reported per statement too: on
these machines throughput swings run to run, CPU per statement is the steadier figure.

The printed table has, per phase: clients, clients connected OK, database connections (max),
errors by code, QPS, p50/p99 statement latency, and (sluice) KiB per client connection; below
it the throughput ratios, overall and per successfully connected client (direct is mostly
failing clients, so the overall ratio alone says little). Results go to
``bench/results/connection_limit.json``.

    .venv/bin/python bench/connection_limit.py [--clients 1000] [--db-limit 64] [--cap 48]
        [--seconds 10] [--think-ms 0] [--workers 1]

Load generator, sluice and MariaDB all share this machine (two cores on the reference box), so
absolute throughput is bounded by the sum of their CPU per statement, and the Python load
generator (aiomysql on uvloop) is itself a large share of it. ``--workers`` splits the clients
over that many load-generator processes; more of them lift the generator's single-core ceiling
but take CPU from sluice and MariaDB, so on two cores one worker is usually the fairer choice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy import sandbox  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
ROWS = 10_000  # rows in the accounts table the workload reads and updates
SAMPLE_EVERY = 0.05  # seconds between Threads_connected / RSS samples
CONNECT_ATTEMPTS = 4  # per client: the first try and up to 3 retries
CONNECT_BACKOFF = 0.25  # seconds before the first retry, doubling (with jitter) after that
CONNECT_TIMEOUT = 10  # seconds for one connect + handshake (PyMySQL's default connect_timeout)
CONNECT_WINDOW = 180.0  # seconds for all clients of a phase to connect or give up
STATEMENT_TIMEOUT = 60.0  # one statement longer than this counts as a stall (error "stall")
GRACE = 75.0  # seconds after the deadline before a client still running is cancelled
ACQUIRE_TIMEOUT = "30s"


# --- the load generator (runs in worker processes) ---------------------------------------------


@dataclass
class WorkerSpec:
    """What one load-generator process does: connect its clients, then run the workload."""

    index: int
    client_ids: list[int]
    host: str
    port: int
    user: str
    password: str
    seconds: float
    seed: int
    think: float = 0.0  # seconds an app "thinks" between requests (mean; 0 = closed loop)


@dataclass
class WorkerResult:
    index: int
    clients: int = 0
    connected: int = 0
    connect_seconds: float = 0.0  # from the first connect to the last client done trying
    connect_errors: Counter[str] = field(default_factory=Counter)  # code -> count (every try)
    errors: Counter[str] = field(default_factory=Counter)  # during the workload, code -> count
    wrong_answers: int = 0
    dropped: int = 0  # clients whose connection was lost during the workload
    stuck: int = 0  # clients still running GRACE seconds after the deadline (cancelled)
    statements: int = 0
    transactions: int = 0
    window: float = 0.0  # seconds from go to the last client finishing
    cpu_seconds: float = 0.0  # this process over that window
    latencies: list[float] = field(default_factory=list)  # seconds, every statement
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    per_client: list[int] = field(default_factory=list)  # statements done, per connected client
    max_statement: float = 0.0


def error_code(exc: BaseException) -> str:
    """The MySQL error code of a driver exception, else the exception's class name."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int):
        return str(args[0])
    return type(exc).__name__


async def connect_client(spec: WorkerSpec, rng: random.Random, result: WorkerResult) -> Any:
    import aiomysql

    for attempt in range(CONNECT_ATTEMPTS):
        try:
            # aiomysql's connect_timeout bounds only the TCP connect, not the wait for the
            # server's greeting, which is where a storm on a full accept queue hangs.
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await aiomysql.connect(
                    host=spec.host,
                    port=spec.port,
                    user=spec.user,
                    password=spec.password,
                    db="app",
                    autocommit=True,  # aiomysql's default (False) would make every client pin
                    connect_timeout=CONNECT_TIMEOUT,
                )
        except TimeoutError:
            result.connect_errors["timeout"] += 1
        except Exception as exc:
            result.connect_errors[error_code(exc)] += 1
        if attempt + 1 < CONNECT_ATTEMPTS:
            await asyncio.sleep(CONNECT_BACKOFF * 2**attempt * (0.5 + rng.random()))
    return None


class Dropped(Exception):
    """The client's connection is gone; it stops (the benchmark does not reconnect)."""


async def client_loop(
    conn: Any,
    client_id: int,
    rng: random.Random,
    deadline: float,
    think: float,
    result: WorkerResult,
) -> int:
    cur = await conn.cursor()
    lat = result.latencies
    kinds = result.by_kind
    done = 0

    async def run(kind: str, sql: str) -> Any:
        nonlocal done
        started = time.perf_counter()
        try:
            async with asyncio.timeout(STATEMENT_TIMEOUT):
                await cur.execute(sql)
        except TimeoutError:
            result.errors["stall"] += 1
            raise Dropped from None
        elapsed = time.perf_counter() - started
        lat.append(elapsed)
        kinds[kind].append(elapsed)
        result.max_statement = max(result.max_statement, elapsed)
        done += 1
        return await cur.fetchall()

    if think:  # app clients are not in step: spread the first requests over one pause
        await asyncio.sleep(rng.random() * think)
    while time.monotonic() < deadline:
        account = rng.randrange(1, ROWS + 1)
        pick = rng.random()
        in_txn = False
        try:
            if pick < 0.5:
                rows = await run("select", f"SELECT id, balance FROM accounts WHERE id = {account}")
                if len(rows) != 1 or rows[0][0] != account:
                    result.wrong_answers += 1
            elif pick < 0.7:
                await run(
                    "insert",
                    f"INSERT INTO events (client, account) VALUES ({client_id}, {account})",
                )
                if cur.rowcount != 1:
                    result.wrong_answers += 1
            else:
                in_txn = True
                await run("begin", "BEGIN")
                await run(
                    "update", f"UPDATE accounts SET balance = balance + 1 WHERE id = {account}"
                )
                if cur.rowcount != 1:
                    result.wrong_answers += 1
                rows = await run("txn_select", f"SELECT id FROM accounts WHERE id = {account}")
                if len(rows) != 1 or rows[0][0] != account:
                    result.wrong_answers += 1
                await run("commit", "COMMIT")
                in_txn = False
                result.transactions += 1
        except Dropped:
            result.dropped += 1
            break
        except Exception as exc:
            result.errors[error_code(exc)] += 1
            if conn.closed:
                result.dropped += 1
                break
            if in_txn:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(STATEMENT_TIMEOUT):
                        await cur.execute("ROLLBACK")
        if think:
            pause = min(think * (0.5 + rng.random()), deadline - time.monotonic())
            if pause > 0:
                await asyncio.sleep(pause)
    return done


async def run_worker(spec: WorkerSpec, q: Any, go: Any) -> None:
    result = WorkerResult(index=spec.index, clients=len(spec.client_ids))
    result.by_kind = {
        k: [] for k in ("select", "insert", "begin", "update", "txn_select", "commit")
    }
    rng = random.Random(spec.seed)
    started = time.monotonic()
    conns = await asyncio.gather(
        *(connect_client(spec, random.Random(rng.random()), result) for _ in spec.client_ids)
    )
    result.connect_seconds = time.monotonic() - started
    live = [(cid, c) for cid, c in zip(spec.client_ids, conns, strict=True) if c is not None]
    result.connected = len(live)
    q.put(("ready", spec.index, result.connected, result.connect_seconds))
    loop = asyncio.get_running_loop()
    try:
        if not await loop.run_in_executor(None, go.wait, CONNECT_WINDOW + 60):
            return  # the parent gave up on this phase
        cpu0, t0 = time.process_time(), time.monotonic()
        deadline = t0 + spec.seconds
        tasks = [
            asyncio.create_task(
                client_loop(c, cid, random.Random(rng.random()), deadline, spec.think, result)
            )
            for cid, c in live
        ]
        finished, pending = await asyncio.wait(tasks, timeout=spec.seconds + GRACE)
        result.window = time.monotonic() - t0
        result.cpu_seconds = time.process_time() - cpu0
        q.put(("done", spec.index))
        for task in pending:
            task.cancel()
        result.stuck = len(pending)
        for task in tasks:
            if task in finished and task.exception() is None:
                result.per_client.append(task.result())
            else:
                result.per_client.append(0)
                if task in finished:
                    result.errors[error_code(task.exception())] += 1  # type: ignore[arg-type]
        await asyncio.gather(*pending, return_exceptions=True)
        result.statements = len(result.latencies)
    finally:
        for _, c in live:
            c.close()
        q.put(("result", spec.index, result))


def worker_main(spec: WorkerSpec, q: Any, go: Any) -> None:
    """Entry point of a load-generator process. Ctrl-C is the parent's business: it stops us."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import uvloop

    uvloop.run(run_worker(spec, q, go))


# --- sampling (a thread of the parent) ---------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def syscalls(pid: int) -> Counter[str]:
    """Read and write system calls of a process so far (/proc/PID/io syscr, syscw)."""
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return Counter({"reads": int(io["syscr"]), "writes": int(io["syscw"])})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


class Sampler(threading.Thread):
    """Every 50 ms: the database's Threads_connected and, if given, the proxy's RSS."""

    def __init__(self, port: int, rss_pid: int | None, limit: float) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.rss_pid = rss_pid
        self.limit = limit  # seconds: the thread stops by itself after this long
        self.stop = threading.Event()
        self.max_threads = 0
        self.max_rss = 0
        self.samples: list[tuple[float, int, int]] = []  # (t, threads_connected, rss)
        self.error: str | None = None

    def run(self) -> None:
        import pymysql

        try:
            db = pymysql.connect(host=HOST, port=self.port, user="root", password="root-pass")
        except Exception as exc:
            self.error = f"sampler could not connect: {exc!r}"
            return
        started = time.monotonic()
        try:
            with db.cursor() as cur:
                while not self.stop.is_set() and time.monotonic() - started < self.limit:
                    cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
                    threads = int(cur.fetchone()[1])
                    rss = rss_bytes(self.rss_pid) if self.rss_pid else 0
                    self.max_threads = max(self.max_threads, threads)
                    self.max_rss = max(self.max_rss, rss)
                    self.samples.append((round(time.monotonic() - started, 3), threads, rss))
                    self.stop.wait(SAMPLE_EVERY)
        except Exception as exc:
            self.error = f"sampler failed: {exc!r}"
        finally:
            db.close()


def threads_connected(port: int) -> int:
    import pymysql

    db = pymysql.connect(host=HOST, port=port, user="root", password="root-pass")
    try:
        with db.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
            return int(cur.fetchone()[1])
    finally:
        db.close()


def command_counters(port: int) -> Counter[str]:
    """The server's statement counters (Questions, Com_*): what the database was asked to do."""
    import pymysql

    db = pymysql.connect(host=HOST, port=port, user="root", password="root-pass")
    try:
        with db.cursor() as cur:
            cur.execute(
                "SHOW GLOBAL STATUS WHERE Variable_name = 'Questions' "
                "OR Variable_name LIKE 'Com\\_%'"
            )
            return Counter({name: int(value) for name, value in cur.fetchall()})
    finally:
        db.close()


def wait_db_idle(port: int, timeout: float = 15.0) -> int:
    """Wait until the database has no client connections left (the last phase's are gone)."""
    deadline = time.monotonic() + timeout
    while True:
        n = threads_connected(port)
        if n == 0 or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


# --- one phase ---------------------------------------------------------------------------------


def get(q: Any, deadline: float, what: str) -> tuple:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise RuntimeError(f"timed out waiting for {what}")
    try:
        return q.get(timeout=remaining)
    except queue.Empty:
        raise RuntimeError(f"timed out waiting for {what}") from None


def run_phase(
    name: str,
    port: int,
    args: argparse.Namespace,
    extra_port: int,
    db_pid: int,
    proxy_pid: int | None = None,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    go = ctx.Event()
    workers = max(1, min(args.workers, args.clients))
    ids = list(range(1, args.clients + 1))
    specs = [
        WorkerSpec(
            w,
            ids[w::workers],
            HOST,
            port,
            "app",
            "app-pass",
            args.seconds,
            1000 + w,
            args.think_ms / 1000,
        )
        for w in range(workers)
    ]
    procs = [ctx.Process(target=worker_main, args=(s, q, go), daemon=True) for s in specs]
    rss_before = rss_bytes(proxy_pid) if proxy_pid else 0
    sampler = Sampler(extra_port, proxy_pid, CONNECT_WINDOW + args.seconds + GRACE + 120)
    sampler.start()
    print(f"[{name}] {args.clients} clients connecting to {HOST}:{port} ...", flush=True)
    try:
        started = time.monotonic()
        for p in procs:
            p.start()
        deadline = started + CONNECT_WINDOW
        connected = 0
        for _ in procs:
            _, _, n, _ = get(q, deadline, f"{name}: clients to connect")
            connected += n
        connect_seconds = time.monotonic() - started
        rss_connected = rss_bytes(proxy_pid) if proxy_pid else 0
        threads_at_connect = sampler.max_threads
        print(
            f"[{name}] {connected} connected in {connect_seconds:.1f}s; "
            f"running the workload for {args.seconds:g}s ...",
            flush=True,
        )
        pids = {"db": db_pid, **({"proxy": proxy_pid} if proxy_pid else {})}
        counters0 = command_counters(extra_port)
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        # mariadbd reads sockets with recv(), which /proc/PID/io does not count: proxy only.
        io0 = {k: syscalls(pid) for k, pid in pids.items() if k == "proxy"}
        t0 = time.monotonic()
        go.set()
        deadline = t0 + args.seconds + GRACE + 30
        for _ in procs:
            get(q, deadline, f"{name}: the workload to finish")
        window = time.monotonic() - t0
        cpu = {k: cpu_seconds(pid) - cpu0[k] for k, pid in pids.items()}
        io = {k: syscalls(pid) for k, pid in pids.items() if k in io0}
        for k in io:
            io[k].subtract(io0[k])
        counters = command_counters(extra_port)
        counters.subtract(counters0)
        results: list[WorkerResult] = []
        deadline = time.monotonic() + 60
        while len(results) < len(procs):
            msg = get(q, deadline, f"{name}: worker results")
            if msg[0] == "result":
                results.append(msg[2])
        for p in procs:
            p.join(10)
    finally:
        sampler.stop.set()
        sampler.join(5)
        go.set()  # lets a worker still waiting for it finish
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
    return summarize(
        name,
        args,
        results,
        sampler,
        connect_seconds,
        window,
        cpu,
        io,
        rss_before,
        rss_connected,
        threads_at_connect,
        counters,
    )


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def summarize(
    name: str,
    args: argparse.Namespace,
    results: list[WorkerResult],
    sampler: Sampler,
    connect_seconds: float,
    window: float,
    cpu: dict[str, float],
    io: dict[str, Counter[str]],
    rss_before: int,
    rss_connected: int,
    threads_at_connect: int,
    counters: Counter[str],
) -> dict[str, Any]:
    connect_errors: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    by_kind: dict[str, list[float]] = {}
    per_client: list[int] = []
    for r in results:
        connect_errors.update(r.connect_errors)
        errors.update(r.errors)
        latencies.extend(r.latencies)
        per_client.extend(r.per_client)
        for kind, values in r.by_kind.items():
            by_kind.setdefault(kind, []).extend(values)
    latencies.sort()
    per_client.sort()
    connected = sum(r.connected for r in results)
    statements = sum(r.statements for r in results)
    measured = max(args.seconds, 1e-9)  # the workload window every client ran
    qps = statements / measured
    out: dict[str, Any] = {
        "phase": name,
        "clients": args.clients,
        "connected": connected,
        "failed_clients": args.clients - connected,
        "connect_seconds": round(connect_seconds, 3),
        "db_connections_max": sampler.max_threads,
        "db_connections_max_while_connecting": threads_at_connect,
        "connect_errors": dict(connect_errors),
        "workload_errors": dict(errors),
        "wrong_answers": sum(r.wrong_answers for r in results),
        "dropped_clients": sum(r.dropped for r in results),
        "stuck_clients": sum(r.stuck for r in results),
        "statements": statements,
        "transactions": sum(r.transactions for r in results),
        "seconds": args.seconds,
        "window_seconds": round(window, 3),
        "qps": round(qps, 1),
        "qps_per_connected_client": round(qps / connected, 3) if connected else 0.0,
        "latency_ms": {
            "p50": round(percentile(latencies, 50) * 1e3, 3),
            "p99": round(percentile(latencies, 99) * 1e3, 3),
            "max": round(max((r.max_statement for r in results), default=0.0) * 1e3, 3),
        },
        "latency_ms_by_kind": {
            kind: {
                "count": len(values),
                "p50": round(percentile(sorted(values), 50) * 1e3, 3),
                "p99": round(percentile(sorted(values), 99) * 1e3, 3),
            }
            for kind, values in by_kind.items()
        },
        "statements_per_client": {
            "min": per_client[0] if per_client else 0,
            "p50": per_client[len(per_client) // 2] if per_client else 0,
            "max": per_client[-1] if per_client else 0,
            "zero": sum(1 for n in per_client if n == 0),
        },
        # The proxy's read/write system calls per statement: 2/2 is the floor (client in,
        # upstream out, upstream in, client out); more means split reads or writes.
        "syscalls_per_statement": {
            k: {kind: round(v[kind] / statements, 2) for kind in ("reads", "writes")}
            if statements
            else None
            for k, v in io.items()
        },
        "cpu_us_per_statement": {
            "load_generator": round(sum(r.cpu_seconds for r in results) / statements * 1e6, 1)
            if statements
            else None,
            **{k: round(v / statements * 1e6, 1) if statements else None for k, v in cpu.items()},
        },
        # What the database was asked over the window (includes the sampler's ~20 SHOW
        # STATUS a second): more than the clients sent means the proxy adds statements.
        "db_questions": counters["Questions"],
        "db_commands": {k: v for k, v in counters.most_common() if v and k != "Questions"},
        "sampler_error": sampler.error,
        "samples": sampler.samples,
    }
    if sampler.rss_pid:
        peak = max(sampler.max_rss, rss_connected)
        out["proxy_rss"] = {
            "before_kib": rss_before // 1024,
            "connected_kib": rss_connected // 1024,
            "peak_kib": peak // 1024,
            "per_client_kib_peak": round((peak - rss_before) / 1024 / connected, 2)
            if connected
            else None,
            "per_client_kib_connected": round((rss_connected - rss_before) / 1024 / connected, 2)
            if connected
            else None,
        }
    return out


# --- setup -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sluice exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"sluice does not listen on {port} after {timeout:g}s")


def create_schema(extra_port: int) -> None:
    import pymysql

    db = pymysql.connect(
        host=HOST,
        port=extra_port,
        user="root",
        password="root-pass",
        database="app",
        autocommit=True,
    )
    try:
        with db.cursor() as cur:
            cur.execute(
                "CREATE TABLE app.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL, "
                "note VARCHAR(64) NOT NULL)"
            )
            cur.execute(
                f"INSERT INTO app.accounts SELECT seq, 0, CONCAT('account ', seq) "
                f"FROM seq_1_to_{ROWS}"
            )
            cur.execute(
                "CREATE TABLE app.events (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                "client INT NOT NULL, account INT NOT NULL, "
                "at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"
            )
    finally:
        db.close()


def start_sluice(work: Path, db: sandbox.SandboxServer, args: argparse.Namespace) -> tuple:
    port = free_port()
    config: dict[str, Any] = {
        "tier": "remote",
        "listen": [f"{HOST}:{port}"],
        "users": [{"name": "app", "password": "app-pass"}],
        "upstream": {"servers": [{"name": "db1", "address": f"{db.host}:{db.port}"}]},
        "pool": {"max_connections": args.cap, "acquire_timeout": ACQUIRE_TIMEOUT},
        "log": {"level": "warning"},
    }
    if args.clients >= 10_000:  # the default limits.max_clients
        config["limits"] = {"max_clients": args.clients + 100}
    path = work / "sluice.yaml"
    path.write_text(json.dumps(config, indent=2))
    log = (work / "sluice.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "run", "-c", str(path)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches us only; we stop sluice in order
    )
    log.close()
    wait_port(port, proc)
    return proc, port


def stop_process(proc: subprocess.Popen | None) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


# --- report ------------------------------------------------------------------------------------


def fmt_errors(*counters: dict[str, int]) -> str:
    total: Counter[str] = Counter()
    for c in counters:
        total.update(c)
    if not total:
        return "none"
    return " ".join(f"{code}x{n}" for code, n in total.most_common())


def report(phases: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"clients={args.clients} db-limit={args.db_limit} cap={args.cap} seconds={args.seconds:g} "
        f"workers={args.workers} think-ms={args.think_ms:g}",
        "",
        f"{'phase':7} {'clients':>7} {'conn OK':>7} {'db conns':>8} {'errors (code x count)':>24} "
        f"{'QPS':>8} {'p50 ms':>7} {'p99 ms':>8} {'KiB/client':>10}",
    ]
    for name, r in phases.items():
        kib = r.get("proxy_rss", {}).get("per_client_kib_peak")
        lines.append(
            f"{name:7} {r['clients']:7d} {r['connected']:7d} {r['db_connections_max']:8d} "
            f"{fmt_errors(r['connect_errors'], r['workload_errors']):>24} {r['qps']:8.0f} "
            f"{r['latency_ms']['p50']:7.2f} {r['latency_ms']['p99']:8.2f} "
            f"{'-' if kib is None else f'{kib:.1f}':>10}"
        )
    lines.append("")
    for name, r in phases.items():
        spc = r["statements_per_client"]
        cpu = r["cpu_us_per_statement"]
        cpu_text = ", ".join(f"{k} {v}" for k, v in cpu.items() if v is not None)
        lines.append(
            f"{name}: connect {r['connect_seconds']:.1f}s (errors while connecting: "
            f"{fmt_errors(r['connect_errors'])}); during the workload: errors "
            f"{fmt_errors(r['workload_errors'])}, wrong answers {r['wrong_answers']}, dropped "
            f"{r['dropped_clients']}, stuck {r['stuck_clients']}"
        )
        lines.append(
            f"    statements per client min/p50/max {spc['min']}/{spc['p50']}/{spc['max']} "
            f"(clients with none: {spc['zero']}); max latency {r['latency_ms']['max']:.1f} ms; "
            f"{r['transactions'] / r['seconds']:.0f} txn/s"
        )
        lines.append(f"    CPU us per statement: {cpu_text}")
        sys_text = ", ".join(
            f"{k} {v.get('reads', 0)}/{v.get('writes', 0)}"
            for k, v in r["syscalls_per_statement"].items()
            if v
        )
        if sys_text:
            lines.append(f"    read/write syscalls per statement: {sys_text}")
        top = ", ".join(f"{k} {v}" for k, v in list(r["db_commands"].items())[:8])
        per = r["db_questions"] / r["statements"] if r["statements"] else 0.0
        lines.append(
            f"    database saw {r['db_questions']} statements ({per:.2f} per client statement): "
            f"{top}"
        )
        if "proxy_rss" in r:
            m = r["proxy_rss"]
            lines.append(
                f"    sluice RSS before/connected/peak {m['before_kib']}/{m['connected_kib']}/"
                f"{m['peak_kib']} KiB: {m['per_client_kib_connected']} KiB per idle client, "
                f"{m['per_client_kib_peak']} KiB per client at peak"
            )
    if "direct" in phases and "sluice" in phases:
        d, s = phases["direct"], phases["sluice"]
        lines.append("")
        if d["qps"]:
            lines.append(
                f"throughput sluice/direct: {s['qps'] / d['qps']:.2f} "
                f"({s['qps']:.0f} vs {d['qps']:.0f} QPS)"
            )
        if d["qps_per_connected_client"]:
            lines.append(
                f"per connected client: sluice {s['qps_per_connected_client']:.2f} vs direct "
                f"{d['qps_per_connected_client']:.2f} QPS/client "
                f"(ratio {s['qps_per_connected_client'] / d['qps_per_connected_client']:.3f}); "
                f"clients served: sluice {s['connected']}/{s['clients']}, direct "
                f"{d['connected']}/{d['clients']}"
            )
        if s["db_connections_max"] > args.cap:
            lines.append(
                f"!! sluice exceeded its cap: {s['db_connections_max']} database connections "
                f"> pool.max_connections {args.cap}"
            )
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------


def positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return value

    return parse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=positive(int), default=1000)
    parser.add_argument("--db-limit", type=positive(int), default=64, help="max_connections")
    parser.add_argument("--cap", type=positive(int), default=48, help="pool.max_connections")
    parser.add_argument("--seconds", type=positive(float), default=10.0)
    parser.add_argument("--workers", type=positive(int), default=1, help="load-generator processes")
    parser.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="mean pause between a client's requests (default 0: every client always busy)",
    )
    args = parser.parse_args()
    if args.think_ms < 0:
        parser.error("--think-ms must be >= 0")
    if args.db_limit < 10:
        parser.error("--db-limit must be >= 10 (MariaDB's minimum max_connections)")

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    work = Path(tempfile.mkdtemp(prefix="sluice-connlimit-", dir="/tmp"))
    sluice: subprocess.Popen | None = None
    phases: dict[str, dict[str, Any]] = {}
    try:
        extra_port = free_port()
        sb = sandbox.up(
            work / "db",
            replicas=0,
            max_connections=args.db_limit,
            extra_args=[f"--extra-port={extra_port}", "--extra-max-connections=4"],
        )
        db = sb.primary
        create_schema(extra_port)
        phases["direct"] = run_phase("direct", db.port, args, extra_port, db.pid)
        left = wait_db_idle(extra_port)
        if left:
            print(f"note: {left} database connections still open after the direct phase")
        sluice, sluice_port = start_sluice(work, db, args)
        time.sleep(0.5)  # let it settle before the RSS baseline
        phases["sluice"] = run_phase("sluice", sluice_port, args, extra_port, db.pid, sluice.pid)
        code = stop_process(sluice)
        sluice_log = (work / "sluice.log").read_text(errors="replace").strip().splitlines()
        phases["sluice"]["exit_code"] = code
        phases["sluice"]["log"] = sluice_log[-200:]
        text = report(phases, args)
        print("\n" + text)
        if sluice_log:
            print(f"\nsluice logged {len(sluice_log)} lines at warning or above; the last ones:")
            print("\n".join("    " + line for line in sluice_log[-15:]))
        if code not in (0, None):
            print(f"\nsluice exited with {code} on SIGTERM")
        out = ROOT / "bench/results/connection_limit.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": vars(args), "phases": phases, "table": text}, indent=1))
        print(f"\nwrote {out}")
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with contextlib.suppress(Exception):
            stop_process(sluice)
        with contextlib.suppress(Exception):
            sandbox.down(work / "db")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
