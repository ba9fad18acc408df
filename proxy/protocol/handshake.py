"""Connection phase messages: greeting, handshake response, auth switch, COM_CHANGE_USER.

Each message is a small dataclass with `parse(payload)` and `payload()` (build), so both sides of
the proxy (sluice as a server to clients, as a client to upstreams) share one definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import charsets
from .codec import (
    ProtocolError,
    lenenc_bytes,
    lenenc_int,
    read_lenenc_bytes,
    read_lenenc_int,
    read_nul_bytes,
    read_u16,
    read_u32,
    u16,
    u32,
)
from .constants import NATIVE_PASSWORD, Capability

MARIADB_EXT_SHIFT = 32
LOW_32 = 0xFFFFFFFF


@dataclass(slots=True)
class Greeting:
    """Initial handshake packet (protocol v10) sent by a server."""

    server_version: str
    connection_id: int
    scramble: bytes  # 20 bytes for mysql_native_password
    capabilities: int  # 64 bits: MariaDB extended capabilities above bit 32
    charset: int
    status: int
    auth_plugin: str = NATIVE_PASSWORD

    @classmethod
    def parse(cls, payload: bytes) -> Greeting:
        if not payload:
            raise ProtocolError("empty greeting")
        if len(payload) < 2:
            raise ProtocolError("truncated greeting")
        if payload[0] == 0xFF:
            raise ProtocolError("server refused the connection with an error")
        if payload[0] != 10:
            raise ProtocolError(f"unsupported protocol version {payload[0]}")
        version, pos = read_nul_bytes(payload, 1)
        conn_id = read_u32(payload, pos)
        part1 = bytes(payload[pos + 4 : pos + 12])
        pos += 13  # 8 bytes of scramble + filler
        caps = read_u16(payload, pos)
        if len(payload) <= pos + 2:
            return cls(_text(version), conn_id, part1, caps, 0, 0, "")
        if len(payload) < pos + 18:
            raise ProtocolError("truncated greeting")
        charset = payload[pos + 2]
        status = read_u16(payload, pos + 3)
        caps |= read_u16(payload, pos + 5) << 16
        data_len = payload[pos + 7]
        reserved = payload[pos + 8 : pos + 18]
        if not caps & Capability.LONG_PASSWORD:  # MariaDB: extended capabilities follow
            caps |= read_u32(reserved, 6) << MARIADB_EXT_SHIFT
        pos += 18
        part2 = b""
        if caps & Capability.SECURE_CONNECTION:
            n = max(13, data_len - 8)
            part2 = bytes(payload[pos : pos + n]).rstrip(b"\0")
            pos += n
        plugin = ""
        if caps & Capability.PLUGIN_AUTH and pos < len(payload):
            name, _ = read_nul_bytes(payload, pos) if b"\0" in payload[pos:] else (payload[pos:], 0)
            plugin = _text(name)
        return cls(_text(version), conn_id, part1 + part2, caps, charset, status, plugin)

    def payload(self) -> bytes:
        caps = self.capabilities
        low = caps & LOW_32
        ext = caps >> MARIADB_EXT_SHIFT
        reserved = b"\0" * 6 + (u32(ext) if not low & Capability.LONG_PASSWORD else b"\0" * 4)
        return b"".join(
            (
                b"\x0a",
                self.server_version.encode() + b"\0",
                u32(self.connection_id),
                self.scramble[:8],
                b"\0",
                u16(low & 0xFFFF),
                bytes((self.charset,)),
                u16(self.status),
                u16(low >> 16),
                bytes((len(self.scramble) + 1,)),
                reserved,
                self.scramble[8:] + b"\0",
                self.auth_plugin.encode() + b"\0",
            )
        )


@dataclass(slots=True)
class HandshakeResponse:
    """HandshakeResponse41 sent by a client (or by sluice to an upstream)."""

    capabilities: int  # 64 bits, as in Greeting
    max_packet: int
    charset: int
    user: str
    auth_response: bytes
    database: str | None = None
    auth_plugin: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    SSL_REQUEST_LENGTH = 32

    @classmethod
    def parse(cls, payload: bytes) -> HandshakeResponse:
        if len(payload) < cls.SSL_REQUEST_LENGTH:
            raise ProtocolError(f"handshake response too short ({len(payload)} bytes)")
        caps = read_u32(payload, 0)
        if not caps & Capability.PROTOCOL_41:
            raise ProtocolError("client does not speak protocol 4.1")
        if not caps & Capability.LONG_PASSWORD:
            caps |= read_u32(payload, 28) << MARIADB_EXT_SHIFT
        max_packet = read_u32(payload, 4)
        charset = payload[8]
        if len(payload) == cls.SSL_REQUEST_LENGTH:
            raise ProtocolError("client asked for TLS, which this listener does not offer")
        codec = charsets.codec_of(charset)  # names are in the client's character set
        user, pos = read_nul_bytes(payload, 32)
        if caps & Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA:
            auth, pos = read_lenenc_bytes(payload, pos)
        elif caps & Capability.SECURE_CONNECTION:
            if pos >= len(payload):
                raise ProtocolError("truncated auth response")
            n = payload[pos]
            auth = bytes(payload[pos + 1 : pos + 1 + n])
            if len(auth) != n:
                raise ProtocolError("truncated auth response")
            pos += 1 + n
        else:
            auth, pos = read_nul_bytes(payload, pos)
        database = None
        if caps & Capability.CONNECT_WITH_DB and pos < len(payload):
            db, pos = read_nul_bytes(payload, pos)
            database = charsets.decode(db, codec)
        plugin = None
        if caps & Capability.PLUGIN_AUTH and pos < len(payload):
            name, pos = read_nul_bytes(payload, pos)
            plugin = _text(name)
        attributes: dict[str, str] = {}
        if caps & Capability.CONNECT_ATTRS and pos < len(payload):
            block, pos = read_lenenc_bytes(payload, pos)
            attributes = _read_attributes(block, codec)
        user_name = charsets.decode(user, codec)
        return cls(caps, max_packet, charset, user_name, auth, database, plugin, attributes)

    def payload(self) -> bytes:
        caps = self.capabilities
        low = caps & LOW_32
        ext = caps >> MARIADB_EXT_SHIFT
        filler = b"\0" * 19 + (u32(ext) if not low & Capability.LONG_PASSWORD else b"\0" * 4)
        codec = charsets.codec_of(self.charset)
        parts = [u32(low), u32(self.max_packet), bytes((self.charset,)), filler]
        parts.append(charsets.encode(self.user, codec) + b"\0")
        if low & Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA:
            parts.append(lenenc_bytes(self.auth_response))
        else:
            parts.append(bytes((len(self.auth_response),)) + self.auth_response)
        if low & Capability.CONNECT_WITH_DB:
            parts.append(charsets.encode(self.database or "", codec) + b"\0")
        if low & Capability.PLUGIN_AUTH:
            parts.append((self.auth_plugin or NATIVE_PASSWORD).encode() + b"\0")
        if low & Capability.CONNECT_ATTRS:
            parts.append(encode_attributes(self.attributes, codec))
        return b"".join(parts)


def ssl_request(capabilities: int, max_packet: int, charset: int) -> bytes:
    """SSLRequest: a HandshakeResponse41 cut after its fixed part, with CLIENT_SSL set."""
    low = capabilities & LOW_32
    ext = capabilities >> MARIADB_EXT_SHIFT
    filler = b"\0" * 19 + (u32(ext) if not low & Capability.LONG_PASSWORD else b"\0" * 4)
    return u32(low | Capability.SSL) + u32(max_packet) + bytes((charset,)) + filler


def encode_attributes(attributes: dict[str, str], codec: str = charsets.DEFAULT) -> bytes:
    block = b"".join(
        lenenc_bytes(charsets.encode(k, codec)) + lenenc_bytes(charsets.encode(v, codec))
        for k, v in attributes.items()
    )
    return lenenc_int(len(block)) + block


def _read_attributes(block: bytes, codec: str) -> dict[str, str]:
    attributes: dict[str, str] = {}
    p = 0
    while p < len(block):
        key, p = read_lenenc_bytes(block, p)
        value, p = read_lenenc_bytes(block, p)
        attributes[charsets.decode(key, codec)] = charsets.decode(value, codec)
    return attributes


def _text(data: bytes) -> str:
    """Protocol text sluice only shows or compares (versions, plugin names): never raises."""
    return data.decode("utf-8", "replace")


@dataclass(slots=True)
class AuthSwitchRequest:
    """0xFE + plugin name + plugin data: the server asks for another auth method."""

    plugin: str
    data: bytes

    @classmethod
    def parse(cls, payload: bytes) -> AuthSwitchRequest:
        if not payload or payload[0] != 0xFE:
            raise ProtocolError("not an auth switch request")
        if len(payload) == 1:  # old-style: switch to mysql_old_password
            return cls("mysql_old_password", b"")
        name, pos = read_nul_bytes(payload, 1)
        return cls(_text(name), bytes(payload[pos:]).rstrip(b"\0"))

    def payload(self) -> bytes:
        return b"\xfe" + self.plugin.encode() + b"\0" + self.data + b"\0"


@dataclass(slots=True)
class ChangeUser:
    """COM_CHANGE_USER: re-authenticate as another user on the same connection."""

    user: str
    auth_response: bytes
    database: str | None
    charset: int | None = None
    auth_plugin: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, payload: bytes, capabilities: int, charset: int = 45) -> ChangeUser:
        """`charset`: the session's collation, which reads the names unless the request
        announces another one (as the server does)."""
        if not payload or payload[0] != 0x11:
            raise ProtocolError("not a COM_CHANGE_USER")
        user, pos = read_nul_bytes(payload, 1)
        if capabilities & Capability.SECURE_CONNECTION:
            if pos >= len(payload):
                raise ProtocolError("truncated COM_CHANGE_USER")
            n = payload[pos]
            auth = bytes(payload[pos + 1 : pos + 1 + n])
            if len(auth) != n:
                raise ProtocolError("truncated COM_CHANGE_USER")
            pos += 1 + n
        else:
            auth, pos = read_nul_bytes(payload, pos)
        db, pos = read_nul_bytes(payload, pos) if pos < len(payload) else (b"", pos)
        announced = None
        plugin = None
        attributes: dict[str, str] = {}
        codec = charsets.codec_of(charset)
        if pos + 2 <= len(payload):
            announced = read_u16(payload, pos)
            if announced:
                codec = charsets.codec_of(announced)
            pos += 2
            if capabilities & Capability.PLUGIN_AUTH and pos < len(payload):
                name, pos = read_nul_bytes(payload, pos)
                plugin = _text(name)
            if capabilities & Capability.CONNECT_ATTRS and pos < len(payload):
                length, p = read_lenenc_int(payload, pos)
                if p + length > len(payload):
                    raise ProtocolError("truncated connect attributes in COM_CHANGE_USER")
                attributes = _read_attributes(payload[p : p + length], codec)
        return cls(
            charsets.decode(user, codec),
            auth,
            charsets.decode(db, codec) or None,
            announced,
            plugin,
            attributes,
        )

    def payload(self, capabilities: int) -> bytes:
        codec = charsets.codec_of(self.charset)
        parts = [b"\x11", charsets.encode(self.user, codec) + b"\0"]
        parts.append(bytes((len(self.auth_response),)) + self.auth_response)
        parts.append(charsets.encode(self.database or "", codec) + b"\0")
        parts.append(u16(self.charset or 0))
        if capabilities & Capability.PLUGIN_AUTH:
            parts.append((self.auth_plugin or NATIVE_PASSWORD).encode() + b"\0")
        if capabilities & Capability.CONNECT_ATTRS:
            parts.append(encode_attributes(self.attributes, codec))
        return b"".join(parts)
