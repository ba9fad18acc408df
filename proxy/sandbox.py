"""Real MariaDB clusters on this machine: one primary and N GTID replicas in one directory.

Tests, benchmarks, ``sluice demo`` and ``sluice sandbox up|down`` all need a database cluster
that behaves like production (real replication, real ``read_only``, real users) but starts in
a second and lives entirely inside a directory: no root service, no systemd, no config files
read from ``/etc`` (every server runs with ``--no-defaults``).

Layout of a sandbox directory ``DIR``::

    DIR/sandbox.json        the state file; exactly what ``sluice sandbox up`` prints
    DIR/db1.sock            unix socket of db1 (kept short: unix socket paths max out near 108)
    DIR/db1/data/           datadir (binlogs and relay logs live here too)
    DIR/db1/error.log       server error log (stdout and stderr of mariadbd go here too)
    DIR/db1/mariadbd.pid

``mariadb-install-db`` takes about a second, so an initialised datadir is built once per
``mariadbd`` version into a cache (``$SLUICE_CACHE_DIR``, else ``~/.cache/sluice``) and copied
for every server. The template already holds the sandbox users, so every server (primary or
replica) accepts the same logins from its first second, before any replication has happened;
the databases ``app`` and ``sluice`` are then created on the primary *through* replication,
which proves the replication path end to end before ``up()`` returns.

This module runs SQL with the ``mariadb`` command-line client over the unix socket rather than
a Python driver: PyMySQL is a test-only dependency and the runtime package must not need it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_FILE = "sandbox.json"
HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # seconds for a server to accept connections / a replica to catch up
STOP_TIMEOUT = 30.0  # seconds for a server to shut down after SIGTERM before SIGKILL
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on BSDs; stay clear of both

# Settings that shape the files of a datadir. They are given to mariadb-install-db as well, so
# a copied template never needs converting at start (a different redo log size would make
# InnoDB rebuild the log on every first start).
_DATA_ARGS = ("--innodb-log-file-size=16M",)

# Small and fast rather than durable: a sandbox is disposable, and its servers share the
# machine with the proxy under test and the load generator.
_FAST_ARGS = (
    "--innodb-buffer-pool-size=32M",
    "--innodb-flush-log-at-trx-commit=2",
    "--innodb-doublewrite=0",
    "--sync-binlog=0",
    "--innodb-buffer-pool-load-at-startup=0",
    "--innodb-buffer-pool-dump-at-shutdown=0",
)

SEMI_SYNC_PRIMARY_ARGS = (
    "--rpl-semi-sync-master-enabled=ON",
    "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
    # Do not fall back to asynchronous replication within a test: a commit waits this long
    # (milliseconds) for a replica's acknowledgement.
    "--rpl-semi-sync-master-timeout=60000",
)
SEMI_SYNC_REPLICA_ARGS = ("--rpl-semi-sync-slave-enabled=ON",)
"""Only the primary side waits: a replica with the primary side on would make its own
replication thread wait for acknowledgements from replicas it does not have. A promotion moves
the primary side along (sluice's switchover does; an orchestrator must, see deploy/hooks)."""

_APP_PRIVILEGES = (
    # Broad data privileges, but neither SUPER nor READ_ONLY ADMIN: read_only=ON must really
    # stop this user's writes (error 1290), since switchover relies on exactly that.
    "SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, REFERENCES, INDEX, ALTER, "
    "CREATE TEMPORARY TABLES, LOCK TABLES, EXECUTE, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, "
    "ALTER ROUTINE, EVENT, TRIGGER, DELETE HISTORY, PROCESS, SHOW DATABASES"
)


class SandboxError(Exception):
    """A sandbox could not be started, stopped, read or queried; the message says why."""


@dataclass
class SandboxServer:
    """One mariadbd of a sandbox, as recorded in the state file."""

    name: str
    host: str
    port: int
    socket: str
    role: str  # "primary" | "replica" (as started; a switchover later does not update it)
    datadir: str
    server_id: int
    pid: int

    @property
    def dir(self) -> Path:
        """Directory holding this server's datadir, error log and pid file."""
        return Path(self.datadir).parent

    @property
    def error_log(self) -> Path:
        return self.dir / "error.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "mariadbd.pid"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SandboxUser:
    """A login that exists on every server of a sandbox."""

    name: str
    password: str
    purpose: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Sandbox:
    """A running (or recorded) cluster: what ``up()`` returns and ``load()`` reads back."""

    dir: str
    servers: list[SandboxServer]
    users: dict[str, SandboxUser]  # keys: "app", "monitor", "repl", "root"
    semi_sync: bool = False  # lossless semi-sync replication (AFTER_SYNC) on every server
    etcd: str | None = None  # host:port of the sandbox's etcd (up(etcd=True)), for fleet.etcd

    @property
    def primary(self) -> SandboxServer:
        for server in self.servers:
            if server.role == "primary":
                return server
        raise SandboxError(f"sandbox {self.dir} has no primary")

    @property
    def replicas(self) -> list[SandboxServer]:
        return [s for s in self.servers if s.role == "replica"]

    def server(self, name: str) -> SandboxServer:
        for server in self.servers:
            if server.name == name:
                return server
        names = ", ".join(s.name for s in self.servers)
        raise SandboxError(f"sandbox {self.dir} has no server {name!r} (it has {names})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "dir": self.dir,
            "servers": [s.to_dict() for s in self.servers],
            "users": {key: u.to_dict() for key, u in self.users.items()},
            "semi_sync": self.semi_sync,
            "etcd": self.etcd,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sandbox:
        return cls(
            dir=data["dir"],
            servers=[SandboxServer(**s) for s in data["servers"]],
            users={key: SandboxUser(**u) for key, u in data["users"].items()},
            semi_sync=bool(data.get("semi_sync", False)),
            etcd=data.get("etcd"),
        )


def default_users() -> dict[str, SandboxUser]:
    """The logins every sandbox has (fresh objects, so callers may not alter a shared one)."""
    return {
        "app": SandboxUser(
            "app", "app-pass", "application: reads and writes data, obeys read_only"
        ),
        "monitor": SandboxUser("sluice", "sluice-pass", "monitor: health checks and switchover"),
        "repl": SandboxUser("repl", "repl-pass", "replication: replicas follow the primary"),
        "root": SandboxUser("root", "root-pass", "administration: all privileges, grant option"),
    }


_PASSWORDS = {u.name: u.password for u in default_users().values()}

# Children started by this process, kept so they can be reaped: a dead child that nobody waits
# for stays a zombie and would look alive to down().
_children: dict[int, subprocess.Popen[bytes]] = {}


# --- public API -------------------------------------------------------------------------------


def up(
    dir: str | Path,
    replicas: int = 1,
    max_connections: int = 151,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    semi_sync: bool = False,
    etcd: bool = False,
) -> Sandbox:
    """Start a primary (db1) and ``replicas`` GTID replicas (db2, db3, …) in ``dir``.

    With ``semi_sync``, replication is lossless semi-sync: a commit is acknowledged to its
    client only once a replica has the transaction in its relay log (wait point AFTER_SYNC),
    so a replica promoted after the primary died has every acknowledged write. Both sides are
    on everywhere, so whichever server is promoted already acts as the primary side.

    Blocks until every server accepts connections and every replica has replicated the
    primary's bootstrap transactions, then writes ``dir/sandbox.json``. Servers run in their
    own session, so they outlive the calling process; stop them with ``down(dir)``. On any
    failure the servers started so far are stopped and SandboxError says what went wrong.
    """
    if replicas < 0:
        raise SandboxError(f"replicas must be >= 0, got {replicas}")
    if max_connections < 10:  # mariadbd would silently raise it to 10, its minimum
        raise SandboxError(
            f"max_connections must be >= 10 (MariaDB's minimum), got {max_connections}"
        )
    count = replicas + 1
    if port is not None and not 1 <= port <= 65536 - count:
        raise SandboxError(f"port must leave room for {count} ports below 65536, got {port}")
    root = Path(dir).resolve()
    longest = root / f"db{count}.sock"
    if len(str(longest)) >= MAX_SOCKET_PATH:
        raise SandboxError(
            f"sandbox dir {root} is too long: unix socket path {longest} would be "
            f"{len(str(longest))} chars (limit {MAX_SOCKET_PATH - 1}); use a shorter --dir"
        )

    started = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    running = [(s.name, pid) for s, pid in _recorded_servers(root) if _is_running(pid, s)]
    if running:
        which = ", ".join(f"{name} (pid {pid})" for name, pid in running)
        raise SandboxError(
            f"{root} already has a running sandbox: {which}; "
            f"run `sluice sandbox down --dir {root}` first"
        )
    _wipe_stale(root)

    mariadbd = _find_mariadbd()
    template = _template(mariadbd)
    ports = _pick_ports(count) if port is None else _check_ports(port, count)
    servers = [
        SandboxServer(
            name=f"db{i}",
            host=HOST,
            port=ports[i - 1],
            socket=str(root / f"db{i}.sock"),
            role="primary" if i == 1 else "replica",
            datadir=str(root / f"db{i}" / "data"),
            server_id=i,
            pid=0,
        )
        for i in range(1, count + 1)
    ]
    sb = Sandbox(
        dir=str(root), servers=servers, users=default_users(), semi_sync=semi_sync and replicas > 0
    )
    try:
        for server in servers:
            shutil.copytree(template, server.datadir)
        _start_all(sb, mariadbd, max_connections, list(extra_args), auto_ports=port is None)
        _bootstrap_replication(sb)
        if etcd:
            sb.etcd = start_etcd(root)
        _write_state(sb)
    except BaseException:
        _stop_pids([(s, s.pid) for s in servers if s.pid])
        stop_etcd(root)
        raise
    log.info("sandbox %s up in %.2fs", root, time.monotonic() - started)
    return sb


def down(dir: str | Path) -> None:
    """Stop every server of the sandbox in ``dir``; harmless when nothing is running.

    Sends SIGTERM (a clean shutdown), waits up to STOP_TIMEOUT seconds, then SIGKILLs what
    is left. Only processes whose command line names this sandbox's datadir are signalled, so
    a stale pid reused by another process is never touched. Data stays in place.
    """
    root = Path(dir).resolve()
    if root.is_dir():
        _stop_pids(_recorded_servers(root))
        stop_etcd(root)


# --- etcd -------------------------------------------------------------------------------------

ETCD_DIR = "etcd"


def start_etcd(root: Path) -> str:
    """An etcd of its own in ``root/etcd`` (a single member on free loopback ports), for
    fleets on etcd; returns its client endpoint ``host:port``. Stopped by ``stop_etcd``."""
    binary = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if binary is None:
        raise SandboxError(
            "etcd is missing: apt-get install etcd-server (scripts/bootstrap.sh does)"
        )
    stop_etcd(root)
    data = root / ETCD_DIR
    shutil.rmtree(data, ignore_errors=True)
    client, peer = _pick_ports(2)
    client_url, peer_url = f"http://{HOST}:{client}", f"http://{HOST}:{peer}"
    command = [
        binary,
        "--name", "sandbox",
        "--data-dir", str(data),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"sandbox={peer_url}",
    ]  # fmt: skip
    with (root / "etcd.log").open("ab") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    (root / "etcd.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SandboxError(f"etcd exited at start:\n{_tail_file(root / 'etcd.log')}")
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(f"{client_url}/health", timeout=1) as answer,
        ):
            if json.load(answer).get("health") == "true":
                log.info("etcd for sandbox %s at %s:%d", root, HOST, client)
                return f"{HOST}:{client}"
        time.sleep(0.1)
    proc.kill()
    raise SandboxError(
        f"etcd not healthy after {START_TIMEOUT:g}s:\n{_tail_file(root / 'etcd.log')}"
    )


def stop_etcd(root: Path) -> None:
    """Stop the sandbox's etcd, if one runs (only a process whose command line names this
    sandbox's etcd data dir is signalled)."""
    try:
        pid = int((root / "etcd.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return
    if str(root / ETCD_DIR).encode() not in cmdline:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    (root / "etcd.pid").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def load(dir: str | Path) -> Sandbox:
    """Read the state file that ``up()`` wrote in ``dir``."""
    path = Path(dir).resolve() / STATE_FILE
    try:
        return Sandbox.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise SandboxError(
            f"no sandbox in {path.parent} ({STATE_FILE} missing); "
            f"run `sluice sandbox up --dir {path.parent}` first"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise SandboxError(f"{path} is not a sandbox state file: {exc}") from exc


def sql(
    server: SandboxServer, statement: str, user: str = "root", password: str | None = None
) -> list[list[str]]:
    """Run ``statement`` (one or more ``;``-separated statements) on ``server``.

    Goes through the ``mariadb`` client over the unix socket and returns the rows as strings
    (``--batch`` format: tab-separated, NULL as ``"NULL"``, special characters escaped).
    ``password`` defaults to the sandbox password of ``user``. A server error raises
    SandboxError carrying the server's message (``ERROR 1290 (HY000) …``).
    """
    return _client(server, statement, user, password, column_names=False)


def wait_replicas_caught_up(sb: Sandbox, timeout: float = START_TIMEOUT) -> None:
    """Block until every replica has applied everything the primary has binlogged so far.

    Compares the primary's ``gtid_binlog_pos`` with each replica's ``gtid_slave_pos`` (via
    ``MASTER_GTID_WAIT`` in short slices, so a replica whose SQL thread has stopped on an error
    fails at once instead of after the whole timeout).
    """
    deadline = time.monotonic() + timeout
    target = sql(sb.primary, "SELECT @@GLOBAL.gtid_binlog_pos")[0][0]
    for replica in sb.replicas:
        while True:
            remaining = deadline - time.monotonic()
            wait = max(0.0, min(1.0, remaining))
            reached = sql(replica, f"SELECT MASTER_GTID_WAIT('{target}', {wait:.3f})")[0][0]
            if reached == "0":
                break
            status = _replica_status(replica)
            if status.get("Slave_SQL_Running") != "Yes" or remaining <= 0:
                raise SandboxError(
                    f"replica {replica.name} did not reach the primary's GTID position "
                    f"{target!r} within {timeout:g}s: {_describe(status)}"
                )


# --- starting ---------------------------------------------------------------------------------


def _find(name: str, *fallbacks: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in fallbacks:
        if os.access(candidate, os.X_OK):
            return candidate
    raise SandboxError(
        f"{name} not found (searched PATH, {', '.join(fallbacks)}); install MariaDB "
        f"(e.g. apt-get install mariadb-server mariadb-client) or run scripts/bootstrap.sh"
    )


def _find_mariadbd() -> str:
    return os.environ.get("SLUICE_MARIADBD") or _find(
        "mariadbd", "/usr/sbin/mariadbd", "/usr/local/sbin/mariadbd"
    )


def _client_binary() -> str:
    return _find("mariadb", "/usr/bin/mariadb", "/usr/local/bin/mariadb")


def _as_root_args() -> list[str]:
    """mariadbd refuses to run as root unless told to; elsewhere it runs as the caller."""
    return ["--user=root"] if os.geteuid() == 0 else []


def _template_sql() -> str:
    """Bootstrap SQL run inside mariadb-install-db: the sandbox's users, on every server."""
    users = default_users()
    lines = [
        # Bootstrap mode starts with the grant tables unloaded; loading them lets CREATE USER
        # and GRANT work here instead of needing a second, networked server start.
        "FLUSH PRIVILEGES;",
        # install-db also creates root@<hostname> with no password; drop it and any anonymous
        # user (an anonymous ''@localhost would shadow '%' users on the socket).
        "DELETE FROM mysql.global_priv WHERE User = '' "
        "OR (User = 'root' AND Host NOT IN ('localhost', '127.0.0.1', '::1'));",
        "DELETE FROM mysql.proxies_priv WHERE User = 'root' "
        "AND Host NOT IN ('localhost', '127.0.0.1', '::1');",
        "FLUSH PRIVILEGES;",
    ]

    def ident(user: SandboxUser) -> str:
        return f"IDENTIFIED VIA mysql_native_password USING PASSWORD('{user.password}')"

    root = users["root"]
    lines += [f"ALTER USER 'root'@'{h}' {ident(root)};" for h in ("localhost", "127.0.0.1", "::1")]
    grants = {
        "app": _APP_PRIVILEGES,
        "monitor": "ALL PRIVILEGES",  # includes READ_ONLY ADMIN: it must write during switchover
        "repl": "REPLICATION SLAVE",
    }
    for key, privileges in grants.items():
        user = users[key]
        lines.append(f"CREATE USER '{user.name}'@'%' {ident(user)};")
        lines.append(f"GRANT {privileges} ON *.* TO '{user.name}'@'%';")
    return "\n".join(lines) + "\n"


def _cache_dir() -> Path:
    explicit = os.environ.get("SLUICE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sluice"


def _template(mariadbd: str) -> Path:
    """An initialised datadir for this mariadbd, built once and then reused from the cache.

    Concurrent builders each work in their own temporary directory and publish with an atomic
    rename; the loser throws its copy away, so a half-built template is never visible.
    """
    try:
        out = subprocess.run(
            [mariadbd, "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"cannot run {mariadbd} --version: {exc}") from exc
    match = re.search(r"Ver\s+(\S+)", out)
    version = re.sub(r"[^A-Za-z0-9.+_-]", "_", match.group(1) if match else "unknown")
    bootstrap = _template_sql()
    digest = hashlib.sha256("\0".join([mariadbd, out, *_DATA_ARGS, bootstrap]).encode())
    templates = _cache_dir() / "templates"
    final = templates / f"{version}-{digest.hexdigest()[:12]}"
    if (final / "mysql").is_dir():
        return final

    templates.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=templates))
    try:
        (work / "bootstrap.sql").write_text(bootstrap)
        install_db = _find("mariadb-install-db", "/usr/bin/mariadb-install-db")
        cmd = [
            install_db,
            "--no-defaults",
            f"--datadir={work / 'data'}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            f"--extra-file={work / 'bootstrap.sql'}",
            *_as_root_args(),
            *_DATA_ARGS,
        ]
        started = time.monotonic()
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0 or not (work / "data" / "mysql").is_dir():
            raise SandboxError(
                f"mariadb-install-db failed (exit {result.returncode}):\n"
                + _tail(result.stdout + result.stderr)
            )
        try:
            os.rename(work / "data", final)
        except OSError:
            if not (final / "mysql").is_dir():  # not a lost race: a real failure
                raise
        log.info("built MariaDB template %s in %.1fs", final, time.monotonic() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # mariadbd sets SO_REUSEADDR too, so a port in TIME_WAIT is usable and counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _check_ports(port: int, count: int) -> list[int]:
    ports = list(range(port, port + count))
    busy = [p for p in ports if not _port_is_free(p)]
    if busy:
        raise SandboxError(
            f"port(s) {', '.join(map(str, busy))} on {HOST} already in use; "
            f"choose another --port or leave it out to pick free ports"
        )
    return ports


def _pick_ports(count: int) -> list[int]:
    """Distinct free ports, held open together so the kernel cannot hand out one twice."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind((HOST, 0))
        return [probe.getsockname()[1] for probe in probes]


def _server_command(
    mariadbd: str, server: SandboxServer, max_connections: int, extra_args: list[str]
) -> list[str]:
    data = server.datadir
    cmd = [
        mariadbd,
        "--no-defaults",
        *_as_root_args(),
        f"--datadir={data}",
        f"--port={server.port}",
        f"--socket={server.socket}",
        f"--bind-address={HOST}",
        f"--pid-file={server.pid_file}",
        f"--log-error={server.error_log}",
        f"--server-id={server.server_id}",
        f"--log-bin={data}/mariadb-bin",
        f"--relay-log={data}/relay-bin",
        "--gtid-strict-mode=ON",
        "--log-slave-updates",
        "--binlog-format=ROW",
        # Stored functions with binary logging need SUPER unless creators are trusted; app has
        # no SUPER, and tests may well create functions.
        "--log-bin-trust-function-creators=1",
        f"--report-host={HOST}",  # so SHOW SLAVE HOSTS on the primary lists its replicas
        f"--report-port={server.port}",
        f"--max-connections={max_connections}",
        # Fault-injection tests abort handshakes by the hundred; never block 127.0.0.1 for it.
        "--max-connect-errors=4294967295",
        "--max-allowed-packet=64M",
        "--local-infile=1",
        "--skip-name-resolve",
        "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_general_ci",
        *_DATA_ARGS,
        *_FAST_ARGS,
    ]
    if server.role == "replica":
        cmd.append("--read-only=ON")
    return cmd + extra_args


def _launch(
    mariadbd: str, server: SandboxServer, max_connections: int, extra_args: list[str]
) -> None:
    cmd = _server_command(mariadbd, server, max_connections, extra_args)
    # Anything mariadbd prints before it opens its error log (bad options) lands there too.
    with open(server.error_log, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    _children[proc.pid] = proc
    server.pid = proc.pid


def _greets(sock_path: str) -> bool:
    """True once the server sends its protocol-10 greeting on the unix socket.

    Cheaper than spawning a client every few milliseconds, and the greeting is only sent
    once the server is past InnoDB recovery and ready to authenticate.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(1.0)
        try:
            conn.connect(sock_path)
            header = conn.recv(5)
        except OSError:
            return False
    return len(header) == 5 and header[4] == 10


def _wait_ready(server: SandboxServer, deadline: float) -> None:
    proc = _children.get(server.pid)
    while not _greets(server.socket):
        if proc is not None and proc.poll() is not None:
            raise SandboxError(
                f"{server.name} (mariadbd) exited with {proc.returncode} during start; "
                f"tail of {server.error_log}:\n{_tail_file(server.error_log)}"
            )
        if time.monotonic() > deadline:
            raise SandboxError(
                f"{server.name} did not accept connections on {server.socket} within "
                f"{START_TIMEOUT:g}s; tail of {server.error_log}:\n{_tail_file(server.error_log)}"
            )
        time.sleep(0.02)


def _start_all(
    sb: Sandbox, mariadbd: str, max_connections: int, extra_args: list[str], auto_ports: bool
) -> None:
    """Start every server at once (startup is mostly waiting), then wait for each.

    A port picked automatically can be taken by someone else between picking and binding;
    such a server is restarted on a fresh port instead of failing the whole sandbox.
    """

    def args(server: SandboxServer) -> list[str]:
        if not sb.semi_sync:
            return extra_args
        side = SEMI_SYNC_PRIMARY_ARGS if server.role == "primary" else SEMI_SYNC_REPLICA_ARGS
        return [*side, *extra_args]

    for server in sb.servers:
        _launch(mariadbd, server, max_connections, args(server))
    deadline = time.monotonic() + START_TIMEOUT
    for server in sb.servers:
        for attempt in range(3):
            try:
                _wait_ready(server, deadline)
                break
            except SandboxError:
                port_lost = "Address already in use" in _tail_file(server.error_log)
                if not (auto_ports and port_lost and attempt < 2):
                    raise
            log.info("%s lost port %d to another process; retrying", server.name, server.port)
            _stop_pids([(server, server.pid)])
            server.port = _pick_ports(1)[0]
            _launch(mariadbd, server, max_connections, args(server))


def _bootstrap_replication(sb: Sandbox) -> None:
    repl = sb.users["repl"]
    for replica in sb.replicas:
        sql(
            replica,
            f"CHANGE MASTER TO MASTER_HOST='{sb.primary.host}', MASTER_PORT={sb.primary.port}, "
            f"MASTER_USER='{repl.name}', MASTER_PASSWORD='{repl.password}', "
            # Retry every second rather than every minute, so a replica repointed or left
            # behind by a switchover in a test reconnects promptly.
            "MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos; START SLAVE;",
        )
    # Created after replication started, so they reach the replicas through it: up() returns
    # only when that path is proven to work.
    sql(sb.primary, "CREATE DATABASE IF NOT EXISTS app; CREATE DATABASE IF NOT EXISTS sluice;")
    wait_replicas_caught_up(sb)


def _write_state(sb: Sandbox) -> None:
    path = Path(sb.dir) / STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(sb.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)


# --- stopping ---------------------------------------------------------------------------------


def _recorded_servers(root: Path) -> list[tuple[SandboxServer, int]]:
    """(server, pid) for every server this directory knows of, from state and pid files.

    The pid files cover a sandbox whose up() died before writing the state file; the state
    file covers a server that died before writing its pid file.
    """
    found: dict[str, SandboxServer] = {}
    with contextlib.suppress(SandboxError):
        found = {s.name: s for s in load(root).servers}
    for path in root.iterdir():
        if path.is_dir() and re.fullmatch(r"db\d+", path.name) and path.name not in found:
            found[path.name] = SandboxServer(
                name=path.name,
                host=HOST,
                port=0,
                socket=str(root / f"{path.name}.sock"),
                role="",
                datadir=str(path / "data"),
                server_id=0,
                pid=0,
            )
    pairs = []
    for server in found.values():
        pids = {server.pid}
        with contextlib.suppress(OSError, ValueError):
            pids.add(int(server.pid_file.read_text().split()[0]))
        pairs += [(server, pid) for pid in pids if pid > 0]
    return pairs


def _is_running(pid: int, server: SandboxServer) -> bool:
    """True until ``pid``, the mariadbd serving ``server``'s datadir, has fully exited.

    "Fully" matters: an exiting process frees its memory (its command line reads empty)
    before it closes its files, so its port and datadir are still held for a moment after.
    Our own children are therefore judged by waitpid, others by /proc until they are gone or
    a zombie. A pid reused by an unrelated process names no such datadir and does not count.
    """
    marker = f"--datadir={server.datadir}"
    proc = _children.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return marker in proc.args
        del _children[pid]  # reaped: its pid may now be reused by anything
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc on this system: trust the pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    name, state = stat[stat.find("(") + 1 : stat.rfind(")")], stat[stat.rfind(")") + 2 :][:1]
    if state in ("Z", "X"):
        return False
    if not cmdline:  # exiting: memory gone, files (port, datadir locks) maybe still open
        return name == "mariadbd"
    return marker.encode() in cmdline.split(b"\0")


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(
    pairs: list[tuple[SandboxServer, int]], timeout: float
) -> list[tuple[SandboxServer, int]]:
    deadline = time.monotonic() + timeout
    while True:
        pairs = [(s, pid) for s, pid in pairs if _is_running(pid, s)]
        if not pairs or time.monotonic() > deadline:
            return pairs
        time.sleep(0.05)


def _stop_pids(pairs: Sequence[tuple[SandboxServer, int]]) -> None:
    """SIGTERM every live server in ``pairs`` together, then wait; SIGKILL stragglers."""
    live = [(s, pid) for s, pid in pairs if _is_running(pid, s)]
    for _, pid in live:
        _signal(pid, signal.SIGTERM)
    live = _wait_gone(live, STOP_TIMEOUT)
    for server, pid in live:
        log.warning(
            "%s (pid %d) ignored SIGTERM for %gs; killing it", server.name, pid, STOP_TIMEOUT
        )
        _signal(pid, signal.SIGKILL)
    live = _wait_gone(live, 10.0)
    if live:
        names = ", ".join(f"{s.name} (pid {pid})" for s, pid in live)
        raise SandboxError(f"could not stop {names}")


def _wipe_stale(root: Path) -> None:
    """Remove what a stopped sandbox left behind (and nothing else) before a fresh start."""
    for path in root.iterdir():
        if not re.fullmatch(r"db\d+(\.sock)?|sandbox\.json(\.tmp)?", path.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


# --- querying ---------------------------------------------------------------------------------


def _client(
    server: SandboxServer,
    statement: str,
    user: str,
    password: str | None,
    column_names: bool,
    timeout: float = 60.0,
) -> list[list[str]]:
    if password is None:
        try:
            password = _PASSWORDS[user]
        except KeyError:
            raise SandboxError(f"no sandbox password known for user {user!r}; pass one") from None
    cmd = [
        _client_binary(),
        "--no-defaults",
        f"--socket={server.socket}",
        f"--user={user}",
        "--batch",
        "--connect-timeout=10",
        "-e",
        statement,
    ]
    if not column_names:
        cmd.insert(-2, "--skip-column-names")
    # The password goes through the environment, not argv, where ps would show it.
    env = {**os.environ, "MYSQL_PWD": password}
    try:
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise SandboxError(
            f"{server.name}: no answer within {timeout:g}s to {statement!r}"
        ) from None
    if result.returncode != 0:
        # In batch mode the client echoes the failing statement between dashes before the
        # error; keep just "ERROR 1290 (HY000): …" when there is one.
        errors = re.findall(r"^(ERROR \d+ \(\w+\))(?: at line \d+)?(:.*)$", result.stderr, re.M)
        message = "\n".join(code + text for code, text in errors) or result.stderr.strip()
        raise SandboxError(
            f"{server.name}: {message or f'mariadb client exited with {result.returncode}'}"
        )
    return [line.split("\t") for line in result.stdout.splitlines()]


def _replica_status(replica: SandboxServer) -> dict[str, str]:
    rows = _client(replica, "SHOW SLAVE STATUS", "root", None, column_names=True)
    return dict(zip(rows[0], rows[1], strict=True)) if len(rows) >= 2 else {}


def _describe(status: dict[str, str]) -> str:
    if not status:
        return "replication is not configured"
    keys = (
        "Slave_IO_Running",
        "Slave_SQL_Running",
        "Last_IO_Error",
        "Last_SQL_Error",
        "Gtid_Slave_Pos",
    )
    return ", ".join(f"{k}={status.get(k, '?')!r}" for k in keys)


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _tail_file(path: Path, lines: int = 20) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError as exc:
        return f"(cannot read: {exc})"
