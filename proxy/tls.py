"""TLS: contexts from the config, and the server side of TLS on a client connection.

Toward clients, TLS starts in the middle of the MySQL handshake: the client sends a 32-byte
SSLRequest and then, often in the same TCP segment, its TLS ClientHello. `loop.start_tls()`
loses bytes that already arrived (uvloop #707, CPython gh-142352), and asyncio's and uvloop's
TLS transports keep a 256 KiB read buffer per connection, which matters at thousands of
clients per tier. So a client connection's TLS runs here on ssl.MemoryBIO: the session keeps
its own transport, feeds it what arrives, and writes through TLSTransport, which encrypts
into the real one. Upstream connections (a few dozen per tier) use loop.start_tls().

Contexts are built once per config (and again on SIGHUP/RELOAD, which re-reads the certificate
files even when the config file did not change); a running session keeps the context it
started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ClientTLSConfig, UpstreamTLSConfig

log = logging.getLogger("sluice.tls")

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
READ_CHUNK = 64 * 1024


class TLSConfigError(Exception):
    """A certificate, key or CA file could not be used; the message names it and why."""


def server_context(config: ClientTLSConfig) -> ssl.SSLContext:
    """The context for clients of this tier's TCP listeners (or the admin endpoints)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[config.min_version]
    try:
        ctx.load_cert_chain(config.cert, config.key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(
            f"tls: cannot load certificate {config.cert} / key {config.key}: {_why(exc)}"
        ) from exc
    if config.ca:
        try:
            ctx.load_verify_locations(config.ca)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"tls.ca: cannot load {config.ca}: {_why(exc)}") from exc
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if config.client_cert == "required" else ssl.CERT_OPTIONAL
        )
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def client_context(config: UpstreamTLSConfig) -> ssl.SSLContext:
    """The context sluice uses as a client (to databases, or to remote tiers)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _VERSIONS[config.min_version]
    verify = config.mode in ("verify_ca", "verify_identity")
    ctx.check_hostname = config.mode == "verify_identity"
    ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    if verify:
        try:
            if config.ca:
                ctx.load_verify_locations(config.ca)
            else:
                ctx.load_default_certs()
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"upstream.tls.ca: cannot load {config.ca}: {_why(exc)}") from exc
    if config.cert:
        try:
            ctx.load_cert_chain(config.cert, config.key or None)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(
                f"upstream.tls: cannot load client certificate {config.cert}: {_why(exc)}"
            ) from exc
    return ctx


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class ServerTLS:
    """The server side of one client connection's TLS, on memory BIOs.

    `feed(data)` takes what the socket delivered and returns the plaintext it decrypts to
    (the handshake's own records are answered here, through the raw transport); `write`
    encrypts. `handshake_done` is set once the handshake completed; `failure` holds why it
    did not."""

    __slots__ = ("_incoming", "_outgoing", "_raw", "failure", "handshake_done", "obj")

    def __init__(self, context: ssl.SSLContext, raw: asyncio.Transport) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._raw = raw
        self.handshake_done = False
        self.failure: str | None = None

    def feed(self, data: bytes) -> bytes:
        self._incoming.write(data)
        if not self.handshake_done:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return b""
            except ssl.SSLError as exc:
                self.failure = exc.reason or str(exc)
                self._flush()  # the alert tells the client why
                return b""
            self.handshake_done = True
            self._flush()
        chunks = []
        while True:
            try:
                chunk = self.obj.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                break
            except ssl.SSLError as exc:
                self.failure = exc.reason or str(exc)
                break
            if not chunk:
                break
            chunks.append(chunk)
        self._flush()  # a renegotiation or a key update may want to answer
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.failure is not None:
            return
        try:
            self.obj.write(data)
        except ssl.SSLError as exc:
            self.failure = exc.reason or str(exc)
            return
        self._flush()

    def _flush(self) -> None:
        out = self._outgoing.read()
        if out and not self._raw.is_closing():
            self._raw.write(out)

    def close_notify(self) -> None:
        if not self.handshake_done or self.failure is not None:
            return
        with contextlib.suppress(ssl.SSLError):
            self.obj.unwrap()
        self._flush()


class TLSTransport(asyncio.Transport):
    """What a client session (and the relay, which writes to the client) sees once TLS is on:
    a transport whose writes are encrypted into the real one."""

    def __init__(self, raw: asyncio.Transport, tls: ServerTLS) -> None:
        super().__init__()
        self._raw = raw
        self._tls = tls

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._tls.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._tls.write(b"".join(list_of_data))

    def is_closing(self) -> bool:
        return self._raw.is_closing()

    def close(self) -> None:
        if not self._raw.is_closing():
            self._tls.close_notify()
        self._raw.close()

    def abort(self) -> None:
        self._raw.abort()

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def can_write_eof(self) -> bool:
        return False  # a half-close would cut the TLS stream

    def write_eof(self) -> None:
        raise NotImplementedError

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        obj = self._tls.obj
        if name == "ssl_object":
            return obj
        if name == "peercert":
            return obj.getpeercert()
        if name == "cipher":
            return obj.cipher()
        return self._raw.get_extra_info(name, default)


def tls_version(transport: Any) -> str | None:
    """The TLS version a transport speaks, or None for plain text."""
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    return obj.version() if obj is not None else None


# --- a MySQL-protocol TLS front (the admin SQL port) -------------------------------------------

_CLIENT_SSL = 0x800


class InBandTLSFront(asyncio.Protocol):
    """Terminates MySQL's in-band TLS in front of a server that speaks none, relaying bytes.

    It forwards the server's greeting with CLIENT_SSL added, starts TLS on the client's
    SSLRequest (on memory BIOs, like client sessions), forwards the handshake response with
    CLIENT_SSL cleared and its sequence id back by one, and the server's answers until the
    login is over forward by one; then it only copies. A plain client is refused with
    `refuse_plain` (an ERR payload) when it is set. The admin SQL port (mysql-mimic, whose own
    TLS loses a ClientHello that arrives with the SSLRequest) sits behind one."""

    def __init__(
        self,
        context: ssl.SSLContext,
        open_upstream: Callable[[asyncio.Protocol], Awaitable[asyncio.Transport]],
        refuse_plain: bytes | None = None,
    ) -> None:
        self.context = context
        self.open_upstream = open_upstream
        self.refuse_plain = refuse_plain
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.tls: ServerTLS | None = None
        self.phase = 0  # 0 greeting, 1 client's first packet, 2 response in TLS, 3 login, 4 relay
        self._task: asyncio.Task[None] | None = None

    # the client side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.pause_reading()  # type: ignore[attr-defined]
        self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            self.upstream = await self.open_upstream(_FrontUpstream(self))
        except OSError:
            self._close()
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.tls is not None:
            data = self.tls.feed(data)
            if self.tls.failure is not None:
                self._close()
                return
            if not data:
                return
            if self.phase == 2:  # the handshake response: the server saw no TLS
                caps = int.from_bytes(data[4:8], "little") & ~_CLIENT_SSL
                seq = bytes(((data[3] - 1) & 0xFF,))
                data = data[:3] + seq + caps.to_bytes(4, "little") + data[8:]
                self.phase = 3
            elif self.phase == 3:  # an answer to an auth switch: one less, as above
                data = data[:3] + bytes(((data[3] - 1) & 0xFF,)) + data[4:]
        elif self.phase == 1:
            length = int.from_bytes(data[:3], "little") if len(data) >= 4 else -1
            if length == 32 and int.from_bytes(data[4:8], "little") & _CLIENT_SSL:
                raw = self.transport
                assert raw is not None
                self.tls = ServerTLS(self.context, raw)
                self.transport = TLSTransport(raw, self.tls)
                self.phase = 2
                if len(data) > 36:  # the ClientHello came along
                    self.data_received(data[36:])
                return
            if self.refuse_plain is not None:
                seq = bytes(((data[3] + 1) & 0xFF,))
                assert self.transport is not None
                self.transport.write(len(self.refuse_plain).to_bytes(3, "little") + seq)
                self.transport.write(self.refuse_plain)
                self._close()
                return
            self.phase = 4
        assert self.upstream is not None
        self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()

    def pause_writing(self) -> None:  # the client reads slower than the server sends
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    # the server side
    def from_upstream(self, data: bytes) -> None:
        if self.phase == 0:  # the greeting: offer TLS
            at = data.index(b"\0", 5) + 14  # version, NUL, id (4), scramble (8), filler
            low = int.from_bytes(data[at : at + 2], "little") | _CLIENT_SSL
            data = data[:at] + low.to_bytes(2, "little") + data[at + 2 :]
            self.phase = 1
        elif self.phase == 3:  # OK, ERR or an auth switch: the client counted one more
            data = data[:3] + bytes(((data[3] + 1) & 0xFF,)) + data[4:]
            if data[4:5] in (b"\x00", b"\xff"):
                self.phase = 4
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None:
            self.upstream.close()


class _FrontUpstream(asyncio.Protocol):
    def __init__(self, front: InBandTLSFront) -> None:
        self.front = front

    def data_received(self, data: bytes) -> None:
        self.front.from_upstream(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.front.transport is not None:
            self.front.transport.close()

    def pause_writing(self) -> None:
        if self.front.transport is not None:
            self.front.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.front.transport is not None:
            self.front.transport.resume_reading()
