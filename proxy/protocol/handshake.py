"""Connection phase messages: greeting, handshake response, auth switch, COM_CHANGE_USER.

Each message is a small dataclass with `parse(payload)` and `payload()` (build), so both sides of
the proxy (sluice as a server to clients, as a client to upstreams) share one definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
            return cls(version.decode(), conn_id, part1, caps, 0, 0, "")
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
            plugin = name.decode()
        return cls(version.decode(), conn_id, part1 + part2, caps, charset, status, plugin)

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
            database = db.decode()
        plugin = None
        if caps & Capability.PLUGIN_AUTH and pos < len(payload):
            name, pos = read_nul_bytes(payload, pos)
            plugin = name.decode()
        attributes: dict[str, str] = {}
        if caps & Capability.CONNECT_ATTRS and pos < len(payload):
            block, pos = read_lenenc_bytes(payload, pos)
            p = 0
            while p < len(block):
                key, p = read_lenenc_bytes(block, p)
                value, p = read_lenenc_bytes(block, p)
                attributes[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        return cls(caps, max_packet, charset, user.decode(), auth, database, plugin, attributes)

    def payload(self) -> bytes:
        caps = self.capabilities
        low = caps & LOW_32
        ext = caps >> MARIADB_EXT_SHIFT
        filler = b"\0" * 19 + (u32(ext) if not low & Capability.LONG_PASSWORD else b"\0" * 4)
        parts = [u32(low), u32(self.max_packet), bytes((self.charset,)), filler]
        parts.append(self.user.encode() + b"\0")
        if low & Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA:
            parts.append(lenenc_bytes(self.auth_response))
        else:
            parts.append(bytes((len(self.auth_response),)) + self.auth_response)
        if low & Capability.CONNECT_WITH_DB:
            parts.append((self.database or "").encode() + b"\0")
        if low & Capability.PLUGIN_AUTH:
            parts.append((self.auth_plugin or NATIVE_PASSWORD).encode() + b"\0")
        if low & Capability.CONNECT_ATTRS:
            parts.append(encode_attributes(self.attributes))
        return b"".join(parts)


def encode_attributes(attributes: dict[str, str]) -> bytes:
    block = b"".join(
        lenenc_bytes(k.encode()) + lenenc_bytes(v.encode()) for k, v in attributes.items()
    )
    return lenenc_int(len(block)) + block


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
        return cls(name.decode(), bytes(payload[pos:]).rstrip(b"\0"))

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
    def parse(cls, payload: bytes, capabilities: int) -> ChangeUser:
        if not payload or payload[0] != 0x11:
            raise ProtocolError("not a COM_CHANGE_USER")
        user, pos = read_nul_bytes(payload, 1)
        if capabilities & Capability.SECURE_CONNECTION:
            if pos >= len(payload):
                raise ProtocolError("truncated COM_CHANGE_USER")
            n = payload[pos]
            auth = bytes(payload[pos + 1 : pos + 1 + n])
            pos += 1 + n
        else:
            auth, pos = read_nul_bytes(payload, pos)
        db, pos = read_nul_bytes(payload, pos) if pos < len(payload) else (b"", pos)
        charset = None
        plugin = None
        attributes: dict[str, str] = {}
        if pos + 2 <= len(payload):
            charset = read_u16(payload, pos)
            pos += 2
            if capabilities & Capability.PLUGIN_AUTH and pos < len(payload):
                name, pos = read_nul_bytes(payload, pos)
                plugin = name.decode()
            if capabilities & Capability.CONNECT_ATTRS and pos < len(payload):
                length, p = read_lenenc_int(payload, pos)
                block = payload[p : p + length]
                q = 0
                while q < len(block):
                    key, q = read_lenenc_bytes(block, q)
                    value, q = read_lenenc_bytes(block, q)
                    attributes[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        return cls(user.decode(), auth, db.decode() or None, charset, plugin, attributes)

    def payload(self, capabilities: int) -> bytes:
        parts = [b"\x11", self.user.encode() + b"\0"]
        parts.append(bytes((len(self.auth_response),)) + self.auth_response)
        parts.append((self.database or "").encode() + b"\0")
        parts.append(u16(self.charset or 0))
        if capabilities & Capability.PLUGIN_AUTH:
            parts.append((self.auth_plugin or NATIVE_PASSWORD).encode() + b"\0")
        if capabilities & Capability.CONNECT_ATTRS:
            parts.append(encode_attributes(self.attributes))
        return b"".join(parts)
