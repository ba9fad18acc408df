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
