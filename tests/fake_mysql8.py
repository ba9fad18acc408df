"""A fault-injection fake of a MySQL 8 server's login, for what cannot run here: no MySQL 8
server is installed on these machines, and MariaDB does not speak caching_sha2_password.

It speaks caching_sha2_password as MySQL documents it (page_caching_sha2_authentication_
exchanges): a 20-byte nonce in the greeting; fast path 0x01 0x03 when its cache holds the
user's SHA256(SHA256(password)); else 0x01 0x04, then the password in clear over TLS, or
0x02 → 0x01 + PEM public key → RSA-OAEP(password + NUL XOR nonce). Its checks are written
here with hashlib and cryptography directly, not with sluice's code, so it is an independent
peer. After the login it answers COM_PING and ends at anything else.

It serves one connection at a time on blocking sockets in a thread: reading exactly the bytes
of each packet never swallows the TLS ClientHello that follows an SSLRequest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import struct
import threading
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

CAPS = (
    0x1  # LONG_PASSWORD
    | 0x8  # CONNECT_WITH_DB
    | 0x200  # PROTOCOL_41
    | 0x2000  # TRANSACTIONS
    | 0x8000  # SECURE_CONNECTION
    | 0x80000  # PLUGIN_AUTH
    | 0x100000  # CONNECT_ATTRS
    | 0x200000  # PLUGIN_AUTH_LENENC_CLIENT_DATA
    | 0x800000  # SESSION_TRACK
    | 0x1000000  # DEPRECATE_EOF
)
SSL = 0x800
OK = b"\x00\x00\x00\x02\x00\x00\x00"


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class FakeMySQL8:
    password: bytes
    user: str = "app"
    tls: ssl.SSLContext | None = None
    plugin: str = "caching_sha2_password"  # what the greeting names
    switch_to: str | None = None  # an auth switch to this plugin right after the response
    cache: set[str] = field(default_factory=set)  # users whose fast path works
    seen: list[str] = field(default_factory=list)  # how each login went: fast, full-tls, full-rsa

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.2)
        self._listener = listener
        self._stopping = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        return listener.getsockname()[1]

    async def stop(self) -> None:
        import asyncio

        self._stopping = True
        if self._thread is not None:  # (off the loop: the loop must close its side first)
            await asyncio.to_thread(self._thread.join, 5)
        if self._listener is not None:
            self._listener.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(10)
            with contextlib.suppress(Exception):
                sock = self._login(sock)
                while True:
                    _, payload = _read(sock)
                    if payload[:1] != b"\x0e":
                        break
                    _write(sock, 1, OK)
            sock.close()

    def _login(self, sock: socket.socket) -> socket.socket:
        nonce = bytes(33 + b % 94 for b in os.urandom(20))
        caps = CAPS | (SSL if self.tls is not None else 0)
        greeting = (
            b"\x0a8.4.3-fake\x00"
            + struct.pack("<I", 7)
            + nonce[:8]
            + b"\x00"
            + struct.pack("<H", caps & 0xFFFF)
            + bytes((255,))
            + struct.pack("<H", 2)
            + struct.pack("<H", caps >> 16)
            + bytes((21,))
            + b"\x00" * 10
            + nonce[8:]
            + b"\x00"
            + self.plugin.encode()
            + b"\x00"
        )
        _write(sock, 0, greeting)
        seq, payload = _read(sock)
        secure = False
        if len(payload) == 32 and struct.unpack_from("<I", payload)[0] & SSL:
            assert self.tls is not None
            sock = self.tls.wrap_socket(sock, server_side=True)
            secure = True
            seq, payload = _read(sock)
        user, token, plugin = _parse_response(payload)
        if user != self.user:
            _error(sock, seq + 1, 1045, f"Access denied for user '{user}'")
            return sock
        if self.switch_to is not None or plugin != "caching_sha2_password":
            name = self.switch_to or "caching_sha2_password"
            _write(sock, seq + 1, b"\xfe" + name.encode() + b"\x00" + nonce + b"\x00")
            seq, token = _read(sock)
            if name != "caching_sha2_password":
                _error(sock, seq + 1, 1045, "the fake only checks caching_sha2_password")
                return sock
        entry = sha256(sha256(self.password))
        if user in self.cache:
            expected = bytes(
                a ^ b for a, b in zip(sha256(self.password), sha256(entry + nonce), strict=True)
            )
            if token != expected:
                _error(sock, seq + 1, 1045, f"Access denied for user '{user}'")
                return sock
            _write(sock, seq + 1, b"\x01\x03")
            _write(sock, seq + 2, OK)
            self.seen.append("fast")
            return sock
        _write(sock, seq + 1, b"\x01\x04")
        seq, payload = _read(sock)
        if secure:
            password = payload.rstrip(b"\x00")
            how = "full-tls"
        else:
            if payload == b"\x02":
                _write(sock, seq + 1, b"\x01" + self.public_pem)
                seq, payload = _read(sock)
            plain = self._key.decrypt(
                payload,
                padding.OAEP(
                    mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None
                ),
            )
            password = bytes(b ^ nonce[i % 20] for i, b in enumerate(plain)).rstrip(b"\x00")
            how = "full-rsa"
        if password != self.password:
            _error(sock, seq + 1, 1045, f"Access denied for user '{user}'")
            return sock
        self.cache.add(user)
        _write(sock, seq + 1, OK)
        self.seen.append(how)
        return sock


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _read(sock: socket.socket) -> tuple[int, bytes]:
    header = _exactly(sock, 4)
    length = header[0] | header[1] << 8 | header[2] << 16
    return header[3], _exactly(sock, length)


def _write(sock: socket.socket, seq: int, payload: bytes) -> None:
    sock.sendall(len(payload).to_bytes(3, "little") + bytes((seq & 0xFF,)) + payload)


def _error(sock: socket.socket, seq: int, code: int, message: str) -> None:
    _write(sock, seq, b"\xff" + struct.pack("<H", code) + b"#28000" + message.encode())


def _parse_response(payload: bytes) -> tuple[str, bytes, str]:
    caps = struct.unpack_from("<I", payload)[0]
    pos = 32
    end = payload.index(b"\x00", pos)
    user = payload[pos:end].decode()
    pos = end + 1
    length = payload[pos]  # a 1-byte length (lenenc or not): tokens here are < 251 bytes
    pos += 1
    token = payload[pos : pos + length]
    pos += length
    if caps & 0x8 and pos < len(payload):
        pos = payload.index(b"\x00", pos) + 1
    plugin = ""
    if caps & 0x80000 and pos < len(payload):
        end = payload.index(b"\x00", pos)
        plugin = payload[pos:end].decode()
    return user, token, plugin
