"""Bookkeeping of an upstream connection that must hold whatever clients it serves."""

from __future__ import annotations

from proxy.backend import ServerConnection


class Transport:
    """Records what the connection asks of its socket."""

    def __init__(self) -> None:
        self.reading = True
        self.written: list[bytes] = []

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


class Sink:
    def pause_reading(self, reason: int) -> None: ...
    def resume_reading(self, reason: int) -> None: ...


def test_a_connection_paused_for_a_slow_client_reads_again_once_detached():
    """Otherwise the next client to get it from the pool would wait forever."""
    upstream = Transport()
    conn = ServerConnection("db1", "127.0.0.1:3306")
    conn.connection_made(upstream)  # type: ignore[arg-type]
    conn.attach(Sink(), Transport(), 0)  # type: ignore[arg-type]
    conn.pause_reading()  # the client's socket buffer is full
    conn.pause_reading()  # asked again: no double pause
    assert not upstream.reading
    conn.detach()  # its response ended: back to the pool
    assert upstream.reading


def test_resuming_a_connection_that_was_not_paused_is_harmless():
    upstream = Transport()
    conn = ServerConnection("db1", "127.0.0.1:3306")
    conn.connection_made(upstream)  # type: ignore[arg-type]
    conn.resume_reading()
    conn.detach()
    assert upstream.reading
