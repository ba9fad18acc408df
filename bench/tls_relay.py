"""A plain uvloop relay that terminates MySQL's in-band TLS: the floor for sluice with TLS.

MySQL clients ask for TLS inside the protocol (an SSLRequest after the server's greeting), so
a TLS-terminating relay must understand that much and no more. This one is
proxy.tls.InBandTLSFront (what sits in front of sluice's admin SQL port): it adds CLIENT_SSL to
the server's greeting, starts TLS on the client's SSLRequest on the same memory-BIO layer
sluice's client sessions use (loop.start_tls loses a ClientHello that arrives with the
SSLRequest), fixes the handshake's sequence ids, and from then on only copies bytes. So
sluice-tls over relay-tls is what sluice adds with TLS on. Usage:
    python bench/tls_relay.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT CERT KEY
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.tls import InBandTLSFront


async def main(listen_port: int, host: str, port: int, cert: str, key: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()

    async def open_upstream(protocol: asyncio.Protocol) -> asyncio.Transport:
        transport, _ = await loop.create_connection(lambda: protocol, host, port)
        return transport

    server = await loop.create_server(
        lambda: InBandTLSFront(context, open_upstream), "127.0.0.1", listen_port, backlog=4096
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
