"""The HTTP admin endpoints on `admin.http`: /healthz, /readyz, /status and /metrics.

A deliberately small HTTP/1.1 server on asyncio streams (admin traffic is a few requests a
second at most; latency does not matter here, simplicity does): one request per connection,
answered with `Connection: close`. GET reads state; POST /pause and /resume drive the write
gate and need `admin.token` (sent as `Authorization: Bearer TOKEN`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import time
import urllib.parse
from typing import TYPE_CHECKING

from .. import errors
from ..backend import UpstreamError
from ..users import Credential
from . import control, metrics, views

if TYPE_CHECKING:
    from ..config import Address, ServerConfig
    from ..tier import Tier

log = logging.getLogger("sluice.admin.http")

REQUEST_TIMEOUT = 10.0
MAX_HEADER_BYTES = 16 * 1024
PROBE_INTERVAL = 5.0
"""/readyz probes the upstream at most this often; polls in between reuse the answer."""
FRESH = 10.0
"""A pooled connection used this recently proves the upstream reachable (the pool itself
hands out connections this fresh without a health check)."""
PROBE_TIMEOUT = 2.0
DEFAULT_CHARSET = 45  # utf8mb4_general_ci

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}

    @classmethod
    def json(cls, status: int, data: object, headers: dict[str, str] | None = None) -> Response:
        body = json.dumps(data, indent=2).encode() + b"\n"
        return cls(status, body, "application/json", headers)

    def encode(self, head_only: bool = False) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers.items()),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


class Readiness:
    """Is the tier worth sending clients to? Accepting, and its upstream answered lately.

    The pool is the first witness: a connection to the upstream in use, or idle and used
    within FRESH seconds, means it is reachable, and costs nothing to check.
    Without one, a probe connects (at most every PROBE_INTERVAL seconds): with the
    `upstream.monitor` account (remote tier) it logs in and quits; otherwise it only reads the
    greeting.
    Prefer configuring the monitor account: a database counts connections that end before
    login against `max_connect_errors` and eventually blocks the host making them."""

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self._checked_at = -PROBE_INTERVAL
        self._problem: str | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> str | None:
        """None when ready, otherwise why not."""
        if not self.tier.accepting:
            return "the tier is not accepting clients (starting or stopping)"
        if self._pool_in_use():
            return None
        async with self._lock:
            if time.monotonic() - self._checked_at >= PROBE_INTERVAL:
                self._problem = await self.probe()
                self._checked_at = time.monotonic()
            return self._problem

    def _candidates(self) -> list[ServerConfig]:
        """Where this tier's clients are served: a remote tier's current database server; any
        of a local tier's remote tiers (it spreads sessions over them)."""
        upstream = self.tier.upstream
        if self.tier.config.tier == "local":
            return list(upstream.servers)
        return [upstream.current] if upstream.current is not None else []

    def _pool_in_use(self) -> bool:
        names = {server.name for server in self._candidates()}
        fresh = time.monotonic() - FRESH
        for key, pool in self.tier.pools.pools.items():
            if key.server not in names:
                continue
            if pool.active or any(c.last_used > fresh and not c.closed for c in pool.idle):
                return True
        return False

    async def probe(self) -> str | None:
        """Connect to the upstream now: None if it (any of a local tier's) answered, else why
        not."""
        candidates = self._candidates()
        if not candidates:
            return self.tier.upstream.writer_problem or "no upstream server is known"
        problems = await asyncio.gather(*(self._probe(s) for s in candidates))
        if any(problem is None for problem in problems):
            return None
        return "; ".join(str(problem) for problem in problems)

    async def _probe(self, server: ServerConfig) -> str | None:
        where = f"upstream {server.name} ({server.address})"
        config = self.tier.config
        monitor = config.upstream.monitor if config.tier == "remote" else None
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                if monitor is not None:
                    await self._log_in(server, monitor.user, monitor.password)
                else:
                    await self._read_greeting(server.address)
        except TimeoutError:
            return f"{where} did not answer within {PROBE_TIMEOUT:g}s"
        except (OSError, asyncio.IncompleteReadError) as exc:
            return f"{where} is unreachable: {exc or type(exc).__name__}"
        except errors.ClientError as exc:
            return exc.message
        except UpstreamError as exc:
            return f"{where} refused the monitor login: {exc.err.message}"
        return None

    async def _log_in(self, server: ServerConfig, user: str, password: str) -> None:
        conn = await self.tier.upstream.connect(
            Credential.of_password(user, password),
            0,
            database=None,
            charset=DEFAULT_CHARSET,
            max_packet=1 << 24,
            attributes={"program_name": "sluice-readyz"},
            server=server,
        )
        conn.close()

    async def _read_greeting(self, address: Address) -> None:
        reader, writer = await _open(address)
        try:
            header = await reader.readexactly(4)
            payload = await reader.readexactly(min(int.from_bytes(header[:3], "little"), 1024))
        finally:
            writer.close()
        if payload[:1] == b"\xff":  # an ERR instead of a greeting (too many connections, ...)
            message = payload[9:] if payload[3:4] == b"#" else payload[3:]
            raise OSError(f"refused: {message.decode(errors='replace')}")


async def _open(address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if address.kind == "unix":
        return await asyncio.open_unix_connection(address.path)
    return await asyncio.open_connection(address.host, address.port)


class HttpAdmin:
    """The admin HTTP server of one tier."""

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self.registry = metrics.tier_registry(tier)
        self.readiness = Readiness(tier)
        self._server: asyncio.Server | None = None
        self._routes = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/status": self._status,
            "/metrics": self._metrics,
        }
        self._controls = {
            "/pause": self._pause,
            "/resume": self._resume,
            "/switchover": self._switchover,
            "/retarget": self._retarget,
        }

    async def start(self, address: Address) -> None:
        if address.kind == "unix":
            self._server = await asyncio.start_unix_server(
                self._serve, address.path, limit=MAX_HEADER_BYTES
            )
        else:
            self._server = await asyncio.start_server(
                self._serve, address.host, address.port, reuse_address=True, limit=MAX_HEADER_BYTES
            )

    @property
    def server(self) -> asyncio.Server | None:
        return self._server

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    # --- one request ----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                response = Response(408, b"request timed out\n")
            except asyncio.LimitOverrunError:
                response = Response(431, b"request header too large\n")
            except asyncio.IncompleteReadError:
                return  # the client went away
            else:
                method, path, query = _request_line(head)
                head_only = method == "HEAD"
                headers = _headers(head)
                length = int(headers.get("content-length", "0") or 0)
                if 0 < length <= MAX_HEADER_BYTES:
                    await reader.readexactly(length)  # controls take no body: read and ignore
                response = await self._respond(method, path, headers, query)
            writer.write(response.encode(head_only))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(
        self,
        method: str | None,
        path: str,
        headers: dict[str, str] | None = None,
        query: dict[str, list[str]] | None = None,
    ) -> Response:
        if method is None:
            return Response.json(400, {"error": "malformed HTTP request line"})
        control = self._controls.get(path)
        if control is not None:
            if method != "POST":
                return Response.json(
                    405, {"error": f"{method} is not allowed on {path}"}, {"Allow": "POST"}
                )
            refusal = self._authorize(headers or {})
            if refusal is not None:
                return refusal
            try:
                return await control(query or {})
            except Exception:
                log.exception("admin control %s failed", path)
                return Response.json(500, {"error": f"{path} failed; see the sluice log"})
        handler = self._routes.get(path)
        if handler is None:
            return Response.json(
                404,
                {
                    "error": f"no such endpoint: {path}",
                    "endpoints": sorted([*self._routes, *self._controls]),
                },
            )
        if method not in ("GET", "HEAD"):
            return Response.json(
                405, {"error": f"{method} is not allowed on {path}"}, {"Allow": "GET, HEAD"}
            )
        try:
            return await handler()
        except Exception:
            log.exception("admin endpoint %s failed", path)
            return Response.json(500, {"error": f"{path} failed; see the sluice log"})

    def _authorize(self, headers: dict[str, str]) -> Response | None:
        token = self.tier.config.admin.token
        if token is None:
            return Response.json(
                403, {"error": "POST controls are disabled: set admin.token in the config"}
            )
        given = headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
            return Response.json(
                401,
                {"error": "missing or wrong token: send Authorization: Bearer <admin.token>"},
                {"WWW-Authenticate": "Bearer"},
            )
        return None

    async def _pause(self, query: dict[str, list[str]]) -> Response:
        result = await self.tier.gate.pause()
        return Response.json(
            200,
            {
                "paused": True,
                "drained_ms": round(result.drained_seconds * 1000),
                "killed": result.killed,
            },
        )

    async def _resume(self, query: dict[str, list[str]]) -> Response:
        """With `to=NAME`, retarget first: a switchover's peers never resume on the old
        primary, even for a moment."""
        try:
            if query.get("to"):
                control.retarget(self.tier, query["to"][-1])
            paused = control.resume(self.tier)
        except control.ControlRefused as exc:
            return Response.json(409, {"error": str(exc)})
        return Response.json(200, {"resumed": True, "paused_ms": round(paused * 1000)})

    async def _switchover(self, query: dict[str, list[str]]) -> Response:
        target = query.get("to", [""])[-1]
        if not target:
            return Response.json(400, {"error": "say which server: POST /switchover?to=NAME"})
        record, error = await control.switchover(self.tier, target, query.get("peer", []))
        answer = record.as_dict() if record is not None else {"outcome": "refused"}
        if error is not None:
            answer["error"] = error
            return Response.json(409, answer)
        return Response.json(200, answer)

    async def _retarget(self, query: dict[str, list[str]]) -> Response:
        target = query.get("to", [""])[-1]
        try:
            was, now = control.retarget(self.tier, target)
        except control.ControlRefused as exc:
            return Response.json(409, {"error": str(exc)})
        return Response.json(200, {"retargeted": True, "was": was, "current": now})

    async def _healthz(self) -> Response:
        return Response(200, b"ok\n")

    async def _readyz(self) -> Response:
        problem = await self.readiness.check()
        if problem is None:
            return Response.json(200, {"ready": True})
        return Response.json(503, {"ready": False, "reason": problem})

    async def _status(self) -> Response:
        return Response.json(200, status(self.tier))

    async def _metrics(self) -> Response:
        return Response(200, metrics.render(self.registry), metrics.CONTENT_TYPE)


def _request_line(head: bytes) -> tuple[str | None, str, dict[str, list[str]]]:
    """(method, path, query parameters), or (None, "", {}) when the line is not HTTP."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/") or not parts[0].isalpha():
        return None, "", {}
    path, _, query = parts[1].partition("?")
    return parts[0].upper(), path, urllib.parse.parse_qs(query)


def _headers(head: bytes) -> dict[str, str]:
    """Header fields of a request head, names lowered."""
    out = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def status(tier: Tier) -> dict[str, object]:
    """The /status document: one tier's sessions, pools and servers right now."""
    greeting = tier.upstream.greeting
    sessions = views.sessions_by_state(tier)
    return {
        "tier": tier.config.tier,
        "accepting": tier.accepting,
        "gate": {
            "paused": tier.gate.closed,
            "waiting": tier.gate.queued,
            "paused_ms": round((time.monotonic() - tier.gate.paused_at) * 1000)
            if tier.gate.closed
            else 0,
        },
        "listen": tier.listen_addresses(),
        "admin": tier.admin_addresses(),
        "upstream": {
            "current": tier.upstream.current.name if tier.upstream.current else None,
            "writer_problem": tier.upstream.writer_problem,
            "version": greeting.server_version if greeting is not None else None,
        },
        "sessions": {"total": sum(sessions.values()), "by_state": sessions},
        "pinned": {
            "now_by_reason": views.pinned_by_reason(tier),
            "total_by_reason": dict(sorted(tier.pins.items())),
        },
        "auth_failures": tier.auth_failures,
        "pools": [dataclasses.asdict(row) for row in views.pool_rows(tier)],
        "servers": [dataclasses.asdict(row) for row in views.server_rows(tier)],
        "heartbeat": tier.heartbeat.as_dict() if tier.heartbeat is not None else None,
        "failover": tier.failover.status(),
        "switchover": {
            "running": tier.switchover.as_dict() if tier.switchover is not None else None,
            "recent": [record.as_dict() for record in reversed(tier.switchovers)],
        },
    }
