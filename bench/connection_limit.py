"""The funnel against a database connection limit: app clients direct, through one sluice tier,
and through the production shape (local tiers on app hosts in front of a remote tier).

One run starts a sandbox MariaDB with a small ``max_connections`` (``--db-limit``) and a table,
then runs up to four phases (``--phases``), one after the other, with the same workload:

- **direct**: N app clients connect straight to MariaDB with aiomysql, all at once. Only about
  ``--db-limit`` of them get in; the rest get error 1040 (Too many connections), retry a few
  times with backoff (each 1040 is counted) and then count as failed clients. Each attempt
  gets 10 s: in a storm MariaDB's small accept queue (``back_log``) overflows, and a client
  whose handshake ACK the kernel dropped sits in ESTABLISHED waiting for a greeting that only
  comes after a SYN-ACK retransmit, if at all; such attempts count as ``timeout``.
- **sluice**: the same N clients connect to one sluice tier (``sluice run`` in a subprocess,
  ``pool.max_connections = --cap``, ``acquire_timeout`` 30s), which funnels them onto at most
  ``--cap`` database connections. No client should see any error.
- **direct-total**: like direct, with all H x C app connections of the two-tier phase
  (``--hosts`` H, ``--clients-per-host`` C, default ``--clients``), from ``--tier-workers``
  load-generator processes (default one per app host).
- **two-tier**: the production story at small scale. H app hosts, each with C app connections
  to its own local tier (``sluice run``, ``tier: local``, listening on a unix socket in the temp
  dir, ``pool.max_connections = --local-pool``), all local tiers funnelling into one remote tier
  (``tier: remote``, TCP, ``pool.max_connections = --cap``) in front of the database. Each app
  host's clients connect with aiomysql's ``unix_socket``. No client should see any error, no
  local tier should hold more than ``--local-pool`` connections to the remote tier and the
  database should see at most ``--cap``. ``--hosts 0`` skips both H x C phases.

  Per-tier counts come from the kernel, not from sluice's own bookkeeping: every 100 ms a
  thread reads /proc/net/tcp (established sockets whose peer port is the remote tier's port,
  attributed to a local tier by the socket inode in its /proc/PID/fd; the remote tier's sockets
  to the database port likewise) and /proc/net/unix (connected sockets carrying a local tier's
  socket path are the app connections it accepted), and the RSS of every tier. Memory per app
  connection is the sum of the local tiers' RSS growth over all connected app clients, and the
  remote tier's growth over the same number.

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
        [--seconds 10] [--think-ms 0] [--workers 1] [--hosts 4] [--clients-per-host N]
        [--local-pool 24] [--tier-workers H] [--phases direct,sluice,direct-total,two-tier]

The **storm** case (``--storm N``, 0 to skip; 4,000 by default) is what an app deploy does to a
busy funnel: while every connection the pool may open is busy with a slow query
(``SELECT SLEEP``), N clients connect at once (aiomysql, from this process) and the time each
one takes to log in is recorded: p50/p99/max and errors, through sluice and, beside it, direct
to the database (where the slow queries hold ``--db-limit`` connections). Through sluice a
login never waits for the pool, so the logins should take milliseconds with no error.

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
    # Two-tier phase: per client, the unix socket of its app host's local tier (None: TCP to
    # host:port) and the app host it belongs to (0 when there are no hosts).
    sockets: list[str | None] = field(default_factory=list)
    app_hosts: list[int] = field(default_factory=list)


@dataclass
class WorkerResult:
    index: int
    clients: int = 0
    connected: int = 0
    connected_by_host: Counter[int] = field(default_factory=Counter)  # app host -> connected
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


async def connect_client(
    spec: WorkerSpec, sock: str | None, rng: random.Random, result: WorkerResult
) -> Any:
    import aiomysql

    for attempt in range(CONNECT_ATTEMPTS):
        try:
            # aiomysql's connect_timeout bounds only the TCP connect, not the wait for the
            # server's greeting, which is where a storm on a full accept queue hangs.
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await aiomysql.connect(
                    host=spec.host,
                    port=spec.port,
                    unix_socket=sock,
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
    sockets = spec.sockets or [None] * len(spec.client_ids)
    app_hosts = spec.app_hosts or [0] * len(spec.client_ids)
    conns = await asyncio.gather(
        *(connect_client(spec, sock, random.Random(rng.random()), result) for sock in sockets)
    )
    result.connect_seconds = time.monotonic() - started
    live = [(cid, c) for cid, c in zip(spec.client_ids, conns, strict=True) if c is not None]
    result.connected = len(live)
    result.connected_by_host.update(h for h, c in zip(app_hosts, conns, strict=True) if c)
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
        finished: set[asyncio.Task[int]] = set()
        pending: set[asyncio.Task[int]] = set()
        if tasks:  # a worker none of whose clients got in (direct phases) has nothing to run
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


TCP_ESTABLISHED = "01"


def tcp_established() -> list[tuple[int, int, int]]:
    """(local port, remote port, socket inode) of every established IPv4 TCP socket.

    The bench runs on loopback in one network namespace, so /proc/net/tcp lists both ends of
    every connection between the tiers: the local tier's end (remote port = the remote tier's
    listening port) and the remote tier's end (local port = its listening port).
    """
    # /proc/net/* is read in chunks, not as one snapshot: a socket table changing under the
    # read can list a socket twice, so entries are keyed by inode.
    out: dict[int, tuple[int, int, int]] = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] != TCP_ESTABLISHED:
                continue
            inode = int(parts[9])
            out[inode] = (
                int(parts[1].rsplit(":", 1)[1], 16),
                int(parts[2].rsplit(":", 1)[1], 16),
                inode,
            )
    return list(out.values())


UNIX_CONNECTED = "03"


def unix_connected(paths: list[str]) -> list[int]:
    """Per socket path: connected unix sockets carrying that name (a listener's accepted ones)."""
    index = {path: i for i, path in enumerate(paths)}
    seen: dict[str, int] = {}  # inode -> path index (see tcp_established on duplicates)
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            if (
                len(parts) == 8
                and parts[5] == UNIX_CONNECTED
                and (i := index.get(parts[7])) is not None
            ):
                seen[parts[6]] = i
    counts = [0] * len(paths)
    for i in seen.values():
        counts[i] += 1
    return counts


def socket_inodes(pid: int) -> tuple[set[int], int]:
    """The socket inodes a process holds open (from /proc/PID/fd), and how many fds it has."""
    inodes: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    names = os.listdir(fd_dir)
    for fd in names:
        with contextlib.suppress(OSError):
            target = os.readlink(f"{fd_dir}/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes, len(names)


class ChainSampler(threading.Thread):
    """Every 100 ms, from outside the tiers: connections between them and their memory.

    - local tier -> remote tier, per local tier: established TCP sockets whose remote port is
      the remote tier's port (from /proc/net/tcp), attributed to a local tier by the socket
      inode in its /proc/PID/fd. Their sum is checked against the remote tier's own end
      (established sockets on its listening port).
    - remote tier -> database: established sockets from the remote tier's process to the
      database port (the database's own Threads_connected is sampled by :class:`Sampler`).
    - app connections held by each local tier: connected unix sockets in /proc/net/unix that
      carry its socket path (sockets the tier accepted inherit its listening socket's name;
      the clients' ends have none).
    - RSS of every tier process.
    This counts what the kernel sees, not what sluice believes it has open.
    """

    def __init__(
        self,
        remote_pid: int,
        remote_port: int,
        db_port: int,
        local_pids: list[int],
        local_sockets: list[str],
        limit: float,
    ) -> None:
        super().__init__(daemon=True)
        self.remote_pid = remote_pid
        self.remote_port = remote_port
        self.db_port = db_port
        self.local_pids = local_pids
        self.local_sockets = local_sockets
        self.limit = limit
        self.stop = threading.Event()
        self.max_to_remote = [0] * len(local_pids)  # per local tier
        self.max_to_remote_total = 0  # sum over local tiers, same sample
        self.max_remote_accepted = 0  # the remote tier's end of those connections
        self.max_remote_to_db = 0
        self.max_app_sockets = [0] * len(local_pids)
        self.max_rss: dict[int, int] = {}
        self.samples: list[tuple[float, list[int], int, int]] = []
        self.error: str | None = None

    def rss(self) -> dict[int, int]:
        return {pid: rss_bytes(pid) for pid in (self.remote_pid, *self.local_pids)}

    def run(self) -> None:
        started = time.monotonic()
        try:
            while not self.stop.is_set() and time.monotonic() - started < self.limit:
                table = tcp_established()
                upstream = {ino for _, rport, ino in table if rport == self.remote_port}
                to_db = {ino for _, rport, ino in table if rport == self.db_port}
                accepted = sum(1 for lport, _, _ in table if lport == self.remote_port)
                apps = unix_connected(self.local_sockets)
                per_local = []
                for i, pid in enumerate(self.local_pids):
                    inodes, _ = socket_inodes(pid)
                    mine = len(inodes & upstream)
                    per_local.append(mine)
                    self.max_to_remote[i] = max(self.max_to_remote[i], mine)
                    self.max_app_sockets[i] = max(self.max_app_sockets[i], apps[i])
                remote_inodes, _ = socket_inodes(self.remote_pid)
                remote_db = len(remote_inodes & to_db)
                self.max_to_remote_total = max(self.max_to_remote_total, sum(per_local))
                self.max_remote_accepted = max(self.max_remote_accepted, accepted)
                self.max_remote_to_db = max(self.max_remote_to_db, remote_db)
                for pid, value in self.rss().items():
                    self.max_rss[pid] = max(self.max_rss.get(pid, 0), value)
                self.samples.append(
                    (round(time.monotonic() - started, 3), per_local, accepted, remote_db)
                )
                self.stop.wait(0.1)
        except Exception as exc:
            self.error = f"chain sampler failed: {exc!r}"


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
    *,
    clients: int | None = None,
    workers: int | None = None,
    sockets: list[str | None] | None = None,
    app_hosts: list[int] | None = None,
    chain: ChainSampler | None = None,
    tier_pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One phase: connect, run the workload, measure.

    The two-tier phase passes ``sockets`` and ``app_hosts`` (per client: its local tier's unix
    socket and its app host), the tier processes (``tier_pids``, for CPU) and ``chain``.
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    go = ctx.Event()
    clients = clients or args.clients
    workers = max(1, min(workers or args.workers, clients))
    ids = list(range(1, clients + 1))
    sockets = sockets or [None] * clients
    app_hosts = app_hosts or [0] * clients
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
            sockets[w::workers],
            app_hosts[w::workers],
        )
        for w in range(workers)
    ]
    procs = [ctx.Process(target=worker_main, args=(s, q, go), daemon=True) for s in specs]
    rss_before = rss_bytes(proxy_pid) if proxy_pid else 0
    sampler = Sampler(extra_port, proxy_pid, CONNECT_WINDOW + args.seconds + GRACE + 120)
    sampler.start()
    rss_before_tiers = chain.rss() if chain else {}
    if chain:
        chain.start()
    where = f"{HOST}:{port}" if sockets[0] is None else f"{len(set(sockets))} unix sockets"
    print(f"[{name}] {clients} clients connecting to {where} ...", flush=True)
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
        rss_connected_tiers = chain.rss() if chain else {}
        threads_at_connect = sampler.max_threads
        print(
            f"[{name}] {connected} connected in {connect_seconds:.1f}s; "
            f"running the workload for {args.seconds:g}s ...",
            flush=True,
        )
        pids = {"db": db_pid, **({"proxy": proxy_pid} if proxy_pid else {}), **(tier_pids or {})}
        counters0 = command_counters(extra_port)
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        # mariadbd reads sockets with recv(), which /proc/PID/io does not count: proxy only.
        io0 = {k: syscalls(pid) for k, pid in pids.items() if k != "db"}
        t0 = time.monotonic()
        go.set()
        deadline = t0 + args.seconds + GRACE + 30
        # A worker sends "done" then its "result"; with several workers one's result can come
        # before another's "done", so keep whatever arrives.
        finished: set[int] = set()
        early: dict[int, WorkerResult] = {}
        while len(finished) < len(procs):
            msg = get(q, deadline, f"{name}: the workload to finish")
            finished.add(msg[1])
            if msg[0] == "result":
                early[msg[1]] = msg[2]
        window = time.monotonic() - t0
        cpu = {k: cpu_seconds(pid) - cpu0[k] for k, pid in pids.items()}
        if tier_pids:
            cpu["local tiers"] = sum(v for k, v in cpu.items() if k.startswith("local"))
        io = {k: syscalls(pid) for k, pid in pids.items() if k in io0}
        for k in io:
            io[k].subtract(io0[k])
        counters = command_counters(extra_port)
        counters.subtract(counters0)
        results: list[WorkerResult] = list(early.values())
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
        if chain:
            chain.stop.set()
            chain.join(5)
        go.set()  # lets a worker still waiting for it finish
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
    out = summarize(
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
        clients,
    )
    if chain:
        out["tiers"] = tier_summary(chain, results, rss_before_tiers, rss_connected_tiers, out)
    return out


def tier_summary(
    chain: ChainSampler,
    results: list[WorkerResult],
    rss_before: dict[int, int],
    rss_connected: dict[int, int],
    phase: dict[str, Any],
) -> dict[str, Any]:
    """Per tier: app connections, upstream connections (max, kernel's view), memory."""
    by_host: Counter[int] = Counter()
    for r in results:
        by_host.update(r.connected_by_host)
    connected = phase["connected"]

    def memory(pid: int, per: int) -> dict[str, Any]:
        before, conn = rss_before[pid], rss_connected[pid]
        peak = max(chain.max_rss.get(pid, 0), conn)
        return {
            "before_kib": before // 1024,
            "connected_kib": conn // 1024,
            "peak_kib": peak // 1024,
            "per_app_connection_kib_connected": round((conn - before) / 1024 / per, 2)
            if per
            else None,
            "per_app_connection_kib_peak": round((peak - before) / 1024 / per, 2) if per else None,
        }

    locals_ = []
    for i, pid in enumerate(chain.local_pids):
        locals_.append(
            {
                "host": i + 1,
                "app_connections_ok": by_host[i + 1],
                "app_sockets_max": chain.max_app_sockets[i],
                "to_remote_max": chain.max_to_remote[i],
                "rss": memory(pid, by_host[i + 1]),
            }
        )
    delta_connected = sum(rss_connected[p] - rss_before[p] for p in chain.local_pids)
    delta_peak = sum(
        max(chain.max_rss.get(p, 0), rss_connected[p]) - rss_before[p] for p in chain.local_pids
    )
    return {
        "method": "kernel view: /proc/net/tcp established sockets mapped to tier processes "
        "through /proc/PID/fd socket inodes, every 100 ms",
        "locals": locals_,
        "locals_to_remote_max_total": chain.max_to_remote_total,
        "remote_accepted_max": chain.max_remote_accepted,
        "remote_to_db_max": chain.max_remote_to_db,
        "locals_rss_per_app_connection_kib_connected": round(delta_connected / 1024 / connected, 2)
        if connected
        else None,
        "locals_rss_per_app_connection_kib_peak": round(delta_peak / 1024 / connected, 2)
        if connected
        else None,
        "remote_rss": memory(chain.remote_pid, connected),
        "chain_sampler_error": chain.error,
        "chain_samples": chain.samples,
    }


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
    clients: int,
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
        "clients": clients,
        "connected": connected,
        "failed_clients": clients - connected,
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


def wait_unix(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sluice exited with {proc.returncode} before listening")
        with socket.socket(socket.AF_UNIX) as s:
            if s.connect_ex(str(path)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"sluice does not listen on {path} after {timeout:g}s")


def spawn_tier(work: Path, name: str, config: dict[str, Any]) -> subprocess.Popen:
    """``sluice run -c work/NAME.yaml`` with its log in work/NAME.log."""
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(config, indent=2))
    log = (work / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "run", "-c", str(path)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches us only; we stop sluice in order
    )
    log.close()
    return proc


def start_chain(
    work: Path, db: sandbox.SandboxServer, args: argparse.Namespace
) -> tuple[subprocess.Popen, int, list[subprocess.Popen], list[Path]]:
    """One remote tier (TCP, cap --cap) and --hosts local tiers (unix socket each, pool
    --local-pool) whose upstream is that remote tier."""
    remote_port = free_port()
    remote = spawn_tier(
        work,
        "remote",
        {
            "tier": "remote",
            "listen": [f"{HOST}:{remote_port}"],
            "users": [{"name": "app", "password": "app-pass"}],
            "upstream": {"servers": [{"name": "db1", "address": f"{db.host}:{db.port}"}]},
            "pool": {"max_connections": args.cap, "acquire_timeout": ACQUIRE_TIMEOUT},
            "log": {"level": "warning"},
        },
    )
    locals_: list[subprocess.Popen] = []
    paths: list[Path] = []
    try:
        wait_port(remote_port, remote)
        for h in range(1, args.hosts + 1):
            sock = work / f"host{h}.sock"
            config: dict[str, Any] = {
                "tier": "local",
                "listen": [f"unix:{sock}"],
                "users": [{"name": "app", "password": "app-pass"}],
                "upstream": {"servers": [{"name": "remote1", "address": f"{HOST}:{remote_port}"}]},
                "pool": {"max_connections": args.local_pool, "acquire_timeout": ACQUIRE_TIMEOUT},
                "log": {"level": "warning"},
            }
            if args.clients_per_host >= 10_000:
                config["limits"] = {"max_clients": args.clients_per_host + 100}
            locals_.append(spawn_tier(work, f"local{h}", config))
            paths.append(sock)
        for proc, sock in zip(locals_, paths, strict=True):
            wait_unix(sock, proc)
    except BaseException:
        for proc in (*locals_, remote):
            stop_process(proc)
        raise
    return remote, remote_port, locals_, paths


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
        f"workers={args.workers} think-ms={args.think_ms:g}"
        + (
            f" hosts={args.hosts} clients-per-host={args.clients_per_host} "
            f"local-pool={args.local_pool} tier-workers={args.tier_workers}"
            if args.hosts
            else ""
        ),
        "",
        f"{'phase':12} {'clients':>7} {'conn OK':>7} {'db conns':>8} {'errors (code x count)':>24} "
        f"{'QPS':>8} {'p50 ms':>7} {'p99 ms':>8} {'KiB/client':>10}",
    ]
    for name, r in phases.items():
        kib = r.get("proxy_rss", {}).get("per_client_kib_peak")
        if "tiers" in r:
            kib = r["tiers"]["locals_rss_per_app_connection_kib_peak"]
        lines.append(
            f"{name:12} {r['clients']:7d} {r['connected']:7d} {r['db_connections_max']:8d} "
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
        if "tiers" in r:
            lines.extend(tier_lines(r["tiers"], args))
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
    if "direct-total" in phases and "two-tier" in phases:
        d, s = phases["direct-total"], phases["two-tier"]
        lines.append("")
        if d["qps"]:
            lines.append(
                f"throughput two-tier/direct-total: {s['qps'] / d['qps']:.2f} "
                f"({s['qps']:.0f} vs {d['qps']:.0f} QPS); clients served: two-tier "
                f"{s['connected']}/{s['clients']}, direct {d['connected']}/{d['clients']}"
            )
    if "two-tier" in phases:
        t = phases["two-tier"]["tiers"]
        over = [
            f"local tier {x['host']}: {x['to_remote_max']} connections to the remote tier "
            f"> pool.max_connections {args.local_pool}"
            for x in t["locals"]
            if x["to_remote_max"] > args.local_pool
        ]
        if phases["two-tier"]["db_connections_max"] > args.cap:
            over.append(
                f"remote tier: {phases['two-tier']['db_connections_max']} database connections "
                f"> pool.max_connections {args.cap}"
            )
        lines.extend(f"!! {text}" for text in over)
    return "\n".join(lines)


def tier_lines(t: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The two-tier phase, per tier."""
    lines = [
        "    per tier (max over the phase, counted from /proc: established TCP sockets by "
        "owning process):"
    ]
    for x in t["locals"]:
        m = x["rss"]
        lines.append(
            f"      local tier {x['host']}: app connections OK {x['app_connections_ok']} "
            f"(held max {x['app_sockets_max']}), to remote tier max "
            f"{x['to_remote_max']}/{args.local_pool}; RSS {m['before_kib']}/"
            f"{m['connected_kib']}/{m['peak_kib']} KiB before/connected/peak"
        )
    r = t["remote_rss"]
    lines.append(
        f"      local tiers -> remote tier: max {t['locals_to_remote_max_total']} (sum of the "
        f"local tiers' ends, same sample), remote tier's end max {t['remote_accepted_max']}"
    )
    lines.append(
        f"      remote tier -> database: max {t['remote_to_db_max']}/{args.cap} (remote tier's "
        f"sockets); RSS {r['before_kib']}/{r['connected_kib']}/{r['peak_kib']} KiB "
        f"before/connected/peak"
    )
    lines.append(
        "      memory per app connection: local tiers "
        f"{t['locals_rss_per_app_connection_kib_connected']} KiB idle, "
        f"{t['locals_rss_per_app_connection_kib_peak']} KiB at peak; remote tier "
        f"{r['per_app_connection_kib_connected']} KiB idle, {r['per_app_connection_kib_peak']} "
        f"KiB at peak"
    )
    if t["chain_sampler_error"]:
        lines.append(f"      !! {t['chain_sampler_error']}")
    return lines


# --- the login storm ---------------------------------------------------------------------------


STORM_HOLD = 20.0  # seconds each slow query holds its connection (longer than the storm)


async def _storm(port: int, clients: int, busy: int) -> dict[str, Any]:
    """`busy` clients start a slow query each, then `clients` log in at once (timed)."""
    import aiomysql

    async def login() -> Any:
        return await aiomysql.connect(
            host=HOST,
            port=port,
            user="app",
            password="app-pass",
            db="app",
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
        )

    async def slow(conn: Any) -> None:
        with contextlib.suppress(Exception):
            async with conn.cursor() as cur:
                await cur.execute(f"SELECT SLEEP({STORM_HOLD:g})")

    warm = await login()  # the tier has served this user before (as in production)
    async with warm.cursor() as cur:
        await cur.execute("SELECT 1")
    warm.close()
    holders = []
    for _ in range(busy):
        with contextlib.suppress(Exception):
            holders.append(await login())
    sleepers = [asyncio.ensure_future(slow(c)) for c in holders]
    await asyncio.sleep(1.0)  # every slow query is running

    times: list[float] = []
    errors: Counter[str] = Counter()
    opened: list[Any] = []

    async def one() -> None:
        began = time.monotonic()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                opened.append(await login())
            times.append(time.monotonic() - began)
        except TimeoutError:
            errors["timeout"] += 1
        except Exception as exc:
            errors[error_code(exc)] += 1

    began = time.monotonic()
    await asyncio.gather(*(one() for _ in range(clients)))
    storm_seconds = time.monotonic() - began
    for conn in opened + holders:
        conn.close()
    for task in sleepers:
        task.cancel()
    times.sort()
    return {
        "clients": clients,
        "busy_connections": len(holders),
        "logged_in": len(times),
        "errors": dict(errors),
        "storm_seconds": round(storm_seconds, 3),
        "login_ms": {
            "p50": round(percentile(times, 50) * 1000, 1) if times else None,
            "p99": round(percentile(times, 99) * 1000, 1) if times else None,
            "max": round(times[-1] * 1000, 1) if times else None,
        },
    }


def run_storm(port: int, clients: int, busy: int) -> dict[str, Any]:
    import uvloop

    from proxy.tier import raise_nofile_limit

    raise_nofile_limit()  # thousands of client sockets in this one process
    return uvloop.run(_storm(port, clients, busy))


def storm_lines(storm: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "login storm: clients connecting at once while every pooled connection runs a slow query",
        f"{'target':12} {'clients':>7} {'busy':>5} {'logged in':>9} {'errors':>24} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}",
    ]
    for name, r in storm.items():
        ms = r["login_ms"]

        def show(v: float | None) -> str:
            return "-" if v is None else f"{v:g}"

        lines.append(
            f"{name:12} {r['clients']:>7} {r['busy_connections']:>5} {r['logged_in']:>9} "
            f"{fmt_errors(r['errors']):>24} {show(ms['p50']):>8} {show(ms['p99']):>8} "
            f"{show(ms['max']):>8}"
        )
    return lines


# --- main --------------------------------------------------------------------------------------


def positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return value

    return parse


PHASES = ("direct", "sluice", "direct-total", "two-tier")


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
    parser.add_argument(
        "--hosts",
        type=int,
        default=4,
        help="app hosts in the two-tier phases, one local tier each (0: no two-tier phases)",
    )
    parser.add_argument(
        "--clients-per-host",
        type=positive(int),
        default=None,
        help="app connections per app host (default: --clients)",
    )
    parser.add_argument(
        "--local-pool",
        type=positive(int),
        default=24,
        help="each local tier's pool.max_connections",
    )
    parser.add_argument(
        "--tier-workers",
        type=positive(int),
        default=None,
        help="load-generator processes in the two-tier phases (default: one per app host)",
    )
    parser.add_argument(
        "--storm",
        type=int,
        default=4000,
        help="clients logging in at once while the pool is busy (0: skip the storm case)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all)",
    )
    args = parser.parse_args()
    args.clients_per_host = args.clients_per_host or args.clients
    args.tier_workers = args.tier_workers or max(1, args.hosts)
    chosen = [x.strip() for x in args.phases.split(",") if x.strip()]
    if unknown := [x for x in chosen if x not in PHASES]:
        parser.error(f"--phases: unknown phase(s) {', '.join(unknown)}; known: {', '.join(PHASES)}")
    if args.hosts < 0:
        parser.error("--hosts must be >= 0")
    if not args.hosts:
        chosen = [x for x in chosen if x not in ("direct-total", "two-tier")]
    args.phases = ",".join(chosen)
    if args.think_ms < 0:
        parser.error("--think-ms must be >= 0")
    if args.db_limit < 10:
        parser.error("--db-limit must be >= 10 (MariaDB's minimum max_connections)")

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    work = Path(tempfile.mkdtemp(prefix="sluice-connlimit-", dir="/tmp"))
    sluice: subprocess.Popen | None = None
    chain_procs: list[subprocess.Popen] = []
    phases: dict[str, dict[str, Any]] = {}
    chosen = args.phases.split(",")
    code: int | None = None
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
        total = args.hosts * args.clients_per_host
        logs: dict[str, list[str]] = {}
        codes: dict[str, int | None] = {}

        def settle(after: str) -> None:
            left = wait_db_idle(extra_port)
            if left:
                print(f"note: {left} database connections still open after the {after} phase")

        storm: dict[str, dict[str, Any]] = {}
        if args.storm:
            # Direct: the slow queries take every connection the database allows (minus the
            # one spare MariaDB keeps), as the pool's do through sluice.
            storm["direct"] = run_storm(db.port, args.storm, args.db_limit)
            settle("direct storm")
            storm_tier, storm_port = start_sluice(work, db, args)
            try:
                storm["sluice"] = run_storm(storm_port, args.storm, args.cap)
            finally:
                stop_process(storm_tier)
            settle("sluice storm")
        if "direct" in chosen:
            phases["direct"] = run_phase("direct", db.port, args, extra_port, db.pid)
            settle("direct")
        if "sluice" in chosen:
            sluice, sluice_port = start_sluice(work, db, args)
            time.sleep(0.5)  # let it settle before the RSS baseline
            phases["sluice"] = run_phase(
                "sluice", sluice_port, args, extra_port, db.pid, sluice.pid
            )
            code = stop_process(sluice)
            codes["sluice"] = code
            logs["sluice"] = (work / "sluice.log").read_text(errors="replace").strip().splitlines()
            phases["sluice"]["exit_code"] = code
            phases["sluice"]["log"] = logs["sluice"][-200:]
            settle("sluice")
        if "direct-total" in chosen:
            phases["direct-total"] = run_phase(
                "direct-total",
                db.port,
                args,
                extra_port,
                db.pid,
                clients=total,
                workers=args.tier_workers,
            )
            settle("direct-total")
        if "two-tier" in chosen:
            remote, remote_port, local_procs, socks = start_chain(work, db, args)
            chain_procs = [*local_procs, remote]
            time.sleep(0.5)  # let them settle before the RSS baseline
            per_client_host = [
                h for h in range(1, args.hosts + 1) for _ in range(args.clients_per_host)
            ]
            chain = ChainSampler(
                remote.pid,
                remote_port,
                db.port,
                [p.pid for p in local_procs],
                [str(x) for x in socks],
                CONNECT_WINDOW + args.seconds + GRACE + 120,
            )
            phases["two-tier"] = run_phase(
                "two-tier",
                remote_port,
                args,
                extra_port,
                db.pid,
                clients=total,
                workers=args.tier_workers,
                sockets=[str(socks[h - 1]) for h in per_client_host],
                app_hosts=per_client_host,
                chain=chain,
                tier_pids={
                    "remote": remote.pid,
                    **{f"local{i}": p.pid for i, p in enumerate(local_procs, start=1)},
                },
            )
            # Locals first: the remote tier drains while its clients leave.
            names = [f"local{i}" for i in range(1, len(local_procs) + 1)] + ["remote"]
            for tier_name, proc in zip(names, chain_procs, strict=True):
                codes[tier_name] = stop_process(proc)
                logs[tier_name] = (
                    (work / f"{tier_name}.log").read_text(errors="replace").strip().splitlines()
                )
            phases["two-tier"]["exit_codes"] = {n: codes[n] for n in names}
            phases["two-tier"]["logs"] = {n: logs[n][-200:] for n in names}
        text = report(phases, args)
        if storm:
            text += "\n" + "\n".join(storm_lines(storm))
        print("\n" + text)
        for tier_name, lines in logs.items():
            if lines:
                print(
                    f"\n{tier_name} logged {len(lines)} lines at warning or above; the last ones:"
                )
                print("\n".join("    " + line for line in lines[-15:]))
        for tier_name, rc in codes.items():
            if rc not in (0, None):
                print(f"\n{tier_name} exited with {rc} on SIGTERM")
        out = ROOT / "bench/results/connection_limit.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {"args": vars(args), "phases": phases, "storm": storm, "table": text}, indent=1
            )
        )
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
        for proc in chain_procs:
            with contextlib.suppress(Exception):
                stop_process(proc)
        with contextlib.suppress(Exception):
            sandbox.down(work / "db")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
