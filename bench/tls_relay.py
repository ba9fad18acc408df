"""A plain uvloop relay that terminates MySQL's in-band TLS: the floor for sluice with TLS.

MySQL clients ask for TLS inside the protocol (an SSLRequest after the server's greeting), so
a TLS-terminating relay must understand that much: it forwards the server's greeting with
CLIENT_SSL added, answers the client's SSLRequest by starting TLS, forwards the client's
handshake response to the server with CLIENT_SSL cleared and its sequence id moved back by
one (and the server's answers until the login is over forward by one); after that it only
copies bytes: plaintext to the server, TLS to the client. Its TLS is the same memory-BIO layer
sluice uses (proxy/tls.py: loop.start_tls loses a ClientHello that arrives with the
SSLRequest), so sluice-tls over relay-tls is what sluice adds with TLS on. Usage:
    python bench/tls_relay.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT CERT KEY
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import sys
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.tls import ServerTLS, TLSTransport

SSL = 0x800


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.greeted = False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        client = self.client
        if not self.greeted:  # the greeting (one packet): offer TLS
            self.greeted = True
            at = data.index(b"\0", 5) + 14  # version, NUL, id (4), scramble (8), filler
            low = struct.unpack_from("<H", data, at)[0]
            data = data[:at] + struct.pack("<H", low | SSL) + data[at + 2 :]
        elif client.tls is not None and not client.logged_in:  # OK/ERR/switch: seq + 1
            client.logged_in = data[4] in (0x00, 0xFF)
            data = data[:3] + bytes(((data[3] + 1) & 0xFF,)) + data[4:]
        if not client.transport.is_closing():
            client.transport.write(data)

    def connection_lost(self, exc):
        self.client.transport.close()

    def pause_writing(self):
        self.client.transport.pause_reading()

    def resume_writing(self):
        self.client.transport.resume_reading()


class Client(asyncio.Protocol):
    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self.host, self.port, self.context = host, port, context
        self.upstream: Upstream | None = None
        self.tls: ServerTLS | None = None
        self.responded = False
        self.logged_in = False

    def connection_made(self, transport):
        self.transport = transport
        transport.pause_reading()
        self.task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.upstream = await loop.create_connection(
            lambda: Upstream(self), self.host, self.port
        )
        self.transport.resume_reading()

    def data_received(self, data):
        tls = self.tls
        if tls is not None:
            data = tls.feed(data)
            if not data:
                return
            if not self.responded:  # the handshake response: the server saw no TLS
                self.responded = True
                caps = struct.unpack_from("<I", data, 4)[0] & ~SSL
                data = data[:3] + b"\x01" + struct.pack("<I", caps) + data[8:]
        elif data[:4] == b"\x20\x00\x00\x01":  # SSLRequest (maybe with the ClientHello)
            raw = self.transport
            self.tls = ServerTLS(self.context, raw)
            self.transport = TLSTransport(raw, self.tls)
            if len(data) > 36:
                self.data_received(data[36:])
            return
        self.upstream.transport.write(data)

    def connection_lost(self, exc):
        if self.upstream is not None:
            self.upstream.transport.close()

    def pause_writing(self):
        self.upstream.transport.pause_reading()

    def resume_writing(self):
        self.upstream.transport.resume_reading()


async def main(listen_port: int, host: str, port: int, cert: str, key: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Client(host, port, context), "127.0.0.1", listen_port, backlog=4096
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
