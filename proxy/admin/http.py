"""The HTTP admin endpoints on `admin.http`: /healthz, /readyz, /status and /metrics.

HTTP/1.1 on asyncio streams with h11 doing the protocol (a sans-I/O state machine, as sluice's
own protocol code is): one request per connection, answered with `Connection: close`, bounded
in header size and time. Admin traffic is a few requests a second; latency does not matter
here, and it never touches the data path. GET reads state; POST /pause, /resume, /switchover
and /retarget need `admin.token` (sent as `Authorization: Bearer TOKEN`), compared in constant
time; wrong tokens from one address are answered more and more slowly, and every control call
is logged with its source and outcome. With `admin.tls` the endpoint speaks HTTPS.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import ssl
import time
import urllib.parse
from typing import TYPE_CHECKING

import h11

from .. import errors
from ..backend import UpstreamError
from ..users import Credential, FailureDelays
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
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
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

    def events(self, head_only: bool = False) -> list[h11.Event]:
        headers = [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(self.body))),
            ("Connection", "close"),
            *self.headers.items(),
        ]
        out: list[h11.Event] = [
            h11.Response(
                status_code=self.status,
                headers=headers,
                reason=_REASONS.get(self.status, b""),
            )
        ]
        if not head_only and self.body:
            out.append(h11.Data(data=self.body))
        out.append(h11.EndOfMessage())
        return out


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

    def __init__(self, tier: Tier, tls: ssl.SSLContext | None = None) -> None:
        self.tier = tier
        self.tls = tls
        self.registry = metrics.tier_registry(tier)
        self.readiness = Readiness(tier)
        self._server: asyncio.Server | None = None
        self._token_failures = FailureDelays(after=3, maximum=2.0)
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
            self._server = await asyncio.start_unix_server(self._serve, address.path)
        else:
            self._server = await asyncio.start_server(
                self._serve, address.host, address.port, reuse_address=True, ssl=self.tls
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
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        peer = writer.get_extra_info("peername")
        source = peer[0] if isinstance(peer, tuple) else "unix"
        head_only = False
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    request = await _read_request(conn, reader)
            except TimeoutError:
                response = Response(408, b"request timed out\n")
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                response = Response.json(status, {"error": f"malformed HTTP request: {exc}"})
            else:
                if request is None:
                    return  # the client went away
                method = request.method.decode("ascii", "replace").upper()
                head_only = method == "HEAD"
                target = request.target.decode("ascii", "replace")
                path, _, query = target.partition("?")
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
                response = await self._respond(
                    method, path, headers, urllib.parse.parse_qs(query), source
                )
            if conn.our_state is not h11.SEND_RESPONSE:
                conn = _answering()  # no request head arrived (timed out): h11 needs one
            for event in response.events(head_only):
                writer.write(conn.send(event))
            await writer.drain()
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        query: dict[str, list[str]] | None = None,
        source: str = "?",
    ) -> Response:
        control = self._controls.get(path)
        if control is not None:
            if method != "POST":
                return Response.json(
                    405, {"error": f"{method} is not allowed on {path}"}, {"Allow": "POST"}
                )
            refusal = self._authorize(headers or {})
            if refusal is not None:
                delay = self._token_failures.failed(source) if refusal.status == 401 else 0
                log.warning(
                    "admin: POST %s from %s refused (%d)%s",
                    path,
                    source,
                    refusal.status,
                    f"; answering in {delay:g}s" if delay else "",
                )
                if delay:
                    await asyncio.sleep(delay)
                return refusal
            self._token_failures.succeeded(source)
            try:
                response = await control(query or {})
            except Exception:
                log.exception("admin control %s from %s failed", path, source)
                return Response.json(500, {"error": f"{path} failed; see the sluice log"})
            args = " ".join(f"{k}={','.join(v)}" for k, v in sorted((query or {}).items()))
            log.info(
                "admin: POST %s%s from %s: %d",
                path,
                f" ({args})" if args else "",
                source,
                response.status,
            )
            return response
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
            was, now = await control.retarget_by_request(self.tier, target)
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


def _answering() -> h11.Connection:
    """A server connection ready to send a response without having read a request (408):
    h11 answers only requests, so it is handed a minimal one."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: sluice\r\n\r\n")
    conn.next_event()
    return conn


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    """The request (its body, which no endpoint takes, is read and dropped), or None if the
    client left first. h11 bounds the head to MAX_HEADER_BYTES (431) and refuses what is not
    HTTP/1.x (400)."""
    request: h11.Request | None = None
    body = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            if not data and request is None:
                return None
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += len(event.data)
            if body > MAX_HEADER_BYTES:
                raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None


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
        **({"fleet": tier.fleet.status()} if tier.fleet is not None else {}),
        "switchover": {
            "running": tier.switchover.as_dict() if tier.switchover is not None else None,
            "recent": [record.as_dict() for record in reversed(tier.switchovers)],
        },
    }
