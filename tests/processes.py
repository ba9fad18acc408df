"""Real `sluice run` processes and a writing load, for fault tests and bench/chaos.py.

Faults a thread in the test process cannot play need processes: kill -9, SIGSTOP, a tier in a
network namespace whose link goes down. TierProcess runs one tier as an operator would (a YAML
file, `sluice run -c`), Load drives app clients through it and records, per command, when it
was issued, when it ended and how (so a test can say which errors came after a fault, and read
back every write that was acknowledged).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy import sandbox as sandbox_mod

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_table(sb: Any, prefix: str = "faults") -> str:
    """A fresh table for a Load to write into (created on the sandbox's primary)."""
    table = f"app.{prefix}_{uuid.uuid4().hex[:8]}"
    sandbox_mod.sql(sb.primary, f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, client INT)")
    return table


class TierProcess:
    """`sluice run -c NAME.yaml` in its own process group (optionally inside a netns)."""

    def __init__(
        self,
        work: Path,
        name: str,
        config: dict[str, Any],
        *,
        host: str = "127.0.0.1",
        netns: str | None = None,
    ) -> None:
        self.work = work
        self.name = name
        self.host = host
        self.netns = netns
        self.port = free_port()
        self.admin_port = free_port()
        config = dict(config)
        config.setdefault("listen", [f"{host}:{self.port}"])
        admin = dict(config.get("admin", {}))
        admin.setdefault("http", f"{host}:{self.admin_port}")
        self.admin_port = int(str(admin["http"]).rsplit(":", 1)[1])
        admin.setdefault("token", "fault-token")
        config["admin"] = admin
        config.setdefault("log", {"level": "info"})
        self.config = config
        self.path = work / f"{name}.yaml"
        self.log_path = work / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> TierProcess:
        self.path.write_text(yaml.safe_dump(self.config))
        command = [sys.executable, "-m", "proxy.cli", "run", "-c", str(self.path)]
        if self.netns is not None:
            command = ["ip", "netns", "exec", self.netns, *command]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log()[-3000:]}")
            # Ready once both the listener and the admin endpoint (it starts a moment later)
            # accept connections.
            if all(self._accepts(port) for port in (self.port, self.admin_port)):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} does not listen on {self.address}:\n{self.log()[-3000:]}")

    def _accepts(self, port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((self.host, port)) == 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        with contextlib.suppress(ProcessLookupError):
            self.signal(signal.SIGCONT)  # a stopped process cannot drain
            self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.proc.wait(10)

    def status(self) -> dict[str, Any]:
        url = f"http://{self.host}:{self.admin_port}/status"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.loads(answer.read())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Outcome:
    """One command of the load: when it was issued and ended, and its error code (or None)."""

    client: int
    issued: float
    ended: float
    error: str | None
    row: int | None = None  # the row an acknowledged INSERT wrote


@dataclass
class Load:
    """`clients` app connections (aiomysql) each inserting rows in a closed loop."""

    host: str
    port: int
    password: str
    table: str
    clients: int = 20
    unix_socket: str | None = None
    think: float = 0.0
    give_up_after: float | None = None  # a client timeout: it gives up, reconnects, retries
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event | None = None

    async def _connect(self) -> Any:
        import aiomysql

        return await aiomysql.connect(
            host=self.host,
            port=self.port,
            unix_socket=self.unix_socket,
            user="app",
            password=self.password,
            db="app",
            autocommit=True,
            connect_timeout=30,
        )

    async def _client(self, n: int) -> None:
        assert self._stop is not None
        conn = None
        seq = 0
        while not self._stop.is_set():
            issued = time.monotonic()
            seq += 1
            row = n * 1_000_000 + seq
            try:
                if conn is None:
                    conn = await self._connect()
                async with asyncio.timeout(self.give_up_after), conn.cursor() as cur:
                    await cur.execute(f"INSERT INTO {self.table} (id, client) VALUES ({row}, {n})")
                self.outcomes.append(Outcome(n, issued, time.monotonic(), None, row))
            except TimeoutError:
                # Gave up on it: whether it ran anyway is what "dead work" measures.
                self.outcomes.append(Outcome(n, issued, time.monotonic(), "gave_up", row))
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            except Exception as exc:
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
                self.outcomes.append(
                    Outcome(n, issued, time.monotonic(), str(code or type(exc).__name__))
                )
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None  # reconnect, as an app's pool would
                await asyncio.sleep(0.05)
            if self.think:
                await asyncio.sleep(self.think)
        if conn is not None:
            conn.close()

    async def run(self, seconds: float, during: Any = None) -> None:
        """Run for `seconds`; `during` is a coroutine run meanwhile (the fault), awaited
        before the load stops."""
        self._stop = asyncio.Event()
        tasks = [asyncio.ensure_future(self._client(n)) for n in range(1, self.clients + 1)]
        fault = asyncio.ensure_future(during) if during is not None else None
        try:
            await asyncio.sleep(seconds)
            if fault is not None:
                await asyncio.wait_for(fault, 120)
        finally:
            self._stop.set()
            if fault is not None and not fault.done():
                fault.cancel()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)

    # --- what happened ------------------------------------------------------------------------

    def acknowledged(self) -> list[int]:
        return [o.row for o in self.outcomes if o.error is None and o.row is not None]

    def given_up(self) -> list[int]:
        return [o.row for o in self.outcomes if o.error == "gave_up" and o.row is not None]

    def latency(self, start: float, end: float, pct: float) -> float:
        """The `pct` percentile of how long commands issued in [start, end) took."""
        took = sorted(o.ended - o.issued for o in self.outcomes if start <= o.issued < end)
        if not took:
            return 0.0
        return took[min(len(took) - 1, int(len(took) * pct / 100))]

    def errors(self, issued_after: float | None = None) -> list[Outcome]:
        return [
            o
            for o in self.outcomes
            if o.error is not None and (issued_after is None or o.issued >= issued_after)
        ]

    def rate(self, start: float, end: float) -> float:
        """Acknowledged commands per second that ended in [start, end)."""
        done = sum(1 for o in self.outcomes if o.error is None and start <= o.ended < end)
        return done / max(end - start, 1e-9)

    def stall(self, after: float) -> float:
        """The longest a command issued after `after` took."""
        took = [o.ended - o.issued for o in self.outcomes if o.issued >= after]
        return max(took, default=0.0)


class NetNamespace:
    """A network namespace joined to this one by a veth pair (needs root and iproute2).

    `down()` takes the link down: packets between the two sides are dropped from then on,
    no RST, no FIN, as when a host loses power or a network partitions."""

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.outer = f"slv{index}a"
        self.inner = f"slv{index}b"
        self.outer_ip = f"10.213.{index}.1"
        self.inner_ip = f"10.213.{index}.2"

    @staticmethod
    def available() -> bool:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            return False
        probe = subprocess.run(
            ["ip", "netns", "add", "sluice-probe"], capture_output=True, check=False
        )
        if probe.returncode != 0:
            return False
        subprocess.run(["ip", "netns", "del", "sluice-probe"], check=False)
        return True

    def _ip(self, *args: str, inside: bool = False) -> None:
        command = ["ip", *args]
        if inside:
            command = ["ip", "netns", "exec", self.name, *command]
        subprocess.run(command, check=True, capture_output=True)

    def create(self) -> NetNamespace:
        self.destroy()
        self._ip("netns", "add", self.name)
        self._ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        self._ip("link", "set", self.inner, "netns", self.name)
        self._ip("addr", "add", f"{self.outer_ip}/30", "dev", self.outer)
        self._ip("link", "set", self.outer, "up")
        self._ip("addr", "add", f"{self.inner_ip}/30", "dev", self.inner, inside=True)
        self._ip("link", "set", self.inner, "up", inside=True)
        self._ip("link", "set", "lo", "up", inside=True)
        return self

    def down(self) -> None:
        """Drop everything between the namespaces from now on (no RST, no FIN): the far end
        goes down, so this side still has its route and sends into a link nobody answers."""
        self._ip("link", "set", self.inner, "down", inside=True)

    def destroy(self) -> None:
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
