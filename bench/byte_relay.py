"""A plain uvloop TCP byte relay: the floor every sluice design decision is measured against.

It does nothing but copy bytes between each client and its own upstream connection, with the
same asyncio.Protocol + backpressure shape sluice uses. Usage:
    python bench/byte_relay.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport):
        self.transport = transport
        self.client.upstream_ready(self)

    def data_received(self, data):
        self.client.transport.write(data)

    def connection_lost(self, exc):
        if not self.client.transport.is_closing():
            self.client.transport.close()

    def pause_writing(self):
        self.client.transport.pause_reading()

    def resume_writing(self):
        self.client.transport.resume_reading()


class Client(asyncio.Protocol):
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.upstream: Upstream | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport):
        self.transport = transport
        transport.pause_reading()
        loop = asyncio.get_running_loop()
        self.connecting = loop.create_task(
            loop.create_connection(lambda: Upstream(self), self.host, self.port)
        )

    def upstream_ready(self, upstream: Upstream) -> None:
        self.upstream = upstream
        if self.transport.is_closing():  # the client left while we connected
            upstream.transport.close()
            return
        self.transport.resume_reading()

    def data_received(self, data):
        self.upstream.transport.write(data)

    def connection_lost(self, exc):
        if self.upstream is not None:
            self.upstream.transport.close()

    def pause_writing(self):
        self.upstream.transport.pause_reading()

    def resume_writing(self):
        self.upstream.transport.resume_reading()


async def main(listen_port: int, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Client(host, port), "127.0.0.1", listen_port, backlog=4096
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
