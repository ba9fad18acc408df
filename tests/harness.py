"""Run sluice tiers inside the test process, each on its own thread and uvloop event loop.

Blocking drivers (PyMySQL, mysql-connector) and asyncio ones (aiomysql, on pytest's loop) can
then talk to a tier while it runs for real, on real sockets, in front of the sandbox.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import uvloop

from proxy.config import Address, Config, parse_config
from proxy.sandbox import Sandbox
from proxy.tier import Tier


def tier_config(
    sandbox: Sandbox, *, tier: str = "remote", unix_path: str | None = None, **sections: Any
) -> Config:
    """A config whose upstream is the sandbox primary, listening on a free 127.0.0.1 port."""
    app = sandbox.users["app"]
    listen = ["127.0.0.1:0"] + ([f"unix:{unix_path}"] if unix_path else [])
    data: dict[str, Any] = {
        "tier": tier,
        "listen": listen,
        "users": [{"name": app.name, "password": app.password}],
        "upstream": {
            "servers": [{"name": s.name, "address": f"{s.host}:{s.port}"} for s in sandbox.servers],
        },
    }
    for key, value in sections.items():
        data[key] = value
    return parse_config(data, allow_zero_port=True)


def monitored_upstream(sandbox: Sandbox) -> dict[str, Any]:
    """The `upstream` section of a remote tier that asks the servers who the writer is."""
    monitor = sandbox.users["monitor"]
    return {
        "servers": [{"name": s.name, "address": f"{s.host}:{s.port}"} for s in sandbox.servers],
        "monitor": {"user": monitor.name, "password": monitor.password},
    }


def heartbeat_section(sandbox: Sandbox, interval: str = "100ms") -> dict[str, Any]:
    return {"user": "app", "password": sandbox.users["app"].password, "interval": interval}


class TierThread:
    """A Tier serving on a private event loop in a daemon thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = uvloop.new_event_loop()
        self.tier = Tier(config)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> TierThread:
        self._thread.start()
        self.call(self.tier.start())
        return self

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the tier's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Any, timeout: float = 30.0) -> Any:
        """Run a plain function on the tier's loop (to read its state safely)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def go() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(go)
        return fut.result(timeout)

    @property
    def address(self) -> Address:
        return self.tier.bound_address(0)

    @property
    def port(self) -> int:
        return self.address.port

    def stop(self) -> None:
        try:
            self.call(self.tier.stop(drain_timeout=2.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def crash(self) -> None:
        """Die like a killed process: every socket closed at once, nothing drained."""

        def die() -> None:
            tier = self.tier
            tier.accepting = False
            for server in tier._servers:
                server.close()
            for session in list(tier.sessions.values()):
                if session.backend is not None:
                    session.backend.abort()
                if session.transport is not None:
                    session.transport.abort()
            for pool in tier.pools.pools.values():
                for conn in pool.idle:
                    conn.abort()
            if tier._janitor is not None:
                tier._janitor.cancel()

        self.run(die)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __enter__(self) -> TierThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def app_connection(tier: TierThread, sandbox: Sandbox, **kw: Any) -> Any:
    """A PyMySQL connection through `tier` as the sandbox's app user (autocommit on)."""
    import pymysql

    params: dict[str, Any] = dict(
        host="127.0.0.1",
        port=tier.port,
        user="app",
        password=sandbox.users["app"].password,
        database="app",
        autocommit=True,
    )
    params.update(kw)
    return pymysql.connect(**params)


def scalar(conn: Any, sql: str, args: Any = None) -> Any:
    """The first column of the first row of `sql`."""
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def fetch_all(statement: str, **connect: Any) -> list[Any]:
    """Every row of one `statement` on a fresh PyMySQL connection (closed afterwards)."""
    import pymysql

    conn = pymysql.connect(**connect)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return list(cur.fetchall())
    finally:
        conn.close()
