"""The command path's own cost, without sockets: sluice's Python per command, exactly.

sysbench through a real tier measures what users get, but its figures swing with everything
else on the machine, and most of a query's CPU there is the kernel's. This drives the real
ClientSession, ServerConnection, scanner and pool objects of one tier with in-memory
transports: each of --sessions clients sends a point select, the pool of --connections
connections carries them (queueing when there are more clients than connections), and a
canned result set answers each. What remains is sluice's own work per command, the part a
plain byte relay does not do.

    .venv/bin/python bench/hot_path.py [--sessions 8,512,4096] [--connections 24]
    valgrind --tool=callgrind .venv/bin/python bench/hot_path.py --commands 20000 --once
    .venv/bin/python bench/hot_path.py --tier local   # a local tier (its upstream a remote tier)

Prints µs per command for each session count (best of --repeat runs). Under callgrind
(`--once`: one run per session count, no warm-up) the instruction count per command is the
figure that repeats exactly run to run; `callgrind_annotate` says where it goes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.backend import ServerConnection  # noqa: E402
from proxy.config import parse_config  # noqa: E402
from proxy.frontend import READY, ClientSession  # noqa: E402
from proxy.pool import PoolKey  # noqa: E402
from proxy.protocol.constants import Capability as C  # noqa: E402
from proxy.protocol.constants import Command, Status  # noqa: E402
from proxy.protocol.framing import frame  # noqa: E402
from proxy.protocol.messages import text_result  # noqa: E402
from proxy.session_state import SessionState  # noqa: E402
from proxy.tier import Tier  # noqa: E402

CAPABILITIES = int(
    C.LONG_PASSWORD
    | C.LONG_FLAG
    | C.PROTOCOL_41
    | C.TRANSACTIONS
    | C.SECURE_CONNECTION
    | C.MULTI_RESULTS
    | C.PLUGIN_AUTH
    | C.SESSION_TRACK
    | C.DEPRECATE_EOF
)
QUERY = frame(0, bytes([Command.QUERY]) + b"SELECT c FROM sbtest1 WHERE id=4242")
RESPONSE = b"".join(
    frame(seq, payload)
    for seq, payload in enumerate(
        text_result([("c", 254)], [[b"x" * 119]], int(Status.AUTOCOMMIT), True), start=1
    )
)


class Transport:
    """An in-memory socket: the connection it belongs to learns what was written."""

    __slots__ = ("conn", "sent")

    def __init__(self, conn: ServerConnection | None = None) -> None:
        self.conn = conn
        self.sent = 0

    def write(self, data: bytes) -> None:
        self.sent += 1
        if self.conn is not None:
            busy.append(self.conn)  # a command went upstream: its response comes in turn

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


busy: collections.deque[ServerConnection] = collections.deque()


def build(sessions: int, connections: int, role: str) -> tuple[Tier, list[ClientSession]]:
    config = parse_config(
        {
            "tier": role,
            "listen": ["127.0.0.1:0"],
            "users": [{"name": "app", "password": "app-pass"}],
            "upstream": {"servers": [{"name": "db1", "address": "127.0.0.1:3306"}]},
            "pool": {"max_connections": connections, "acquire_timeout": 60},
        },
        allow_zero_port=True,
    )
    tier = Tier(config)
    tier.upstream.current = tier.upstream.server("db1")
    key = PoolKey("db1", "app", CAPABILITIES & 0xFFFFFFFF, 45)
    pool = tier.pools.pool(key)
    slots = tier.pools.servers["db1"]
    now = time.monotonic()
    for _ in range(connections):
        conn = ServerConnection("db1", "127.0.0.1:3306")
        conn.connection_made(Transport(conn))  # type: ignore[arg-type]
        conn.capabilities = CAPABILITIES
        conn.scanner.deprecate_eof = True
        conn.pool_key = key
        conn.state = SessionState(None)
        conn.opened_at = conn.last_used = now
        conn.on_lost = tier.pools._on_lost
        pool.idle.append(conn)
        slots.open += 1
        slots.claim("app")
    out = []
    for _ in range(sessions):
        session = ClientSession(tier)
        session.transport = Transport()  # type: ignore[assignment]
        session.state = READY
        session.user = "app"
        session.capabilities = CAPABILITIES
        session.pool_key = key
        session.session = SessionState(None)
        tier.sessions[session.id] = session
        out.append(session)
    return tier, out


async def run(sessions: list[ClientSession], commands: int) -> float:
    """Seconds per command over `commands`: every session sends one, responses come FIFO.
    A command on a slow path (a task) gets the event loop until it reaches its connection."""
    done = 0
    began = time.perf_counter()
    while done < commands:
        for session in sessions:
            session.data_received(QUERY)
        answered = 0
        while answered < len(sessions):
            if not busy:
                await asyncio.sleep(0)
                continue
            busy.popleft().data_received(RESPONSE)
            answered += 1
        done += len(sessions)
    return (time.perf_counter() - began) / done


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", default="8,512,4096")
    parser.add_argument("--connections", type=int, default=24)
    parser.add_argument("--tier", choices=("remote", "local"), default="remote")
    parser.add_argument("--commands", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--once", action="store_true", help="one run each (for callgrind)")
    args = parser.parse_args()
    for count in (int(n) for n in args.sessions.split(",")):
        _tier, sessions = build(count, args.connections, args.tier)
        commands = max(args.commands, count)
        if args.once:
            best = await run(sessions, commands)
        else:
            await run(sessions, min(commands, 20_000))  # warm-up
            best = min([await run(sessions, commands) for _ in range(args.repeat)])
        errors = sum(1 for s in sessions if s.state != READY)
        print(
            f"{count:5d} sessions on {args.connections} connections: "
            f"{best * 1e6:6.2f} µs per command"
            + (f"  ({errors} sessions not idle at the end: a bug)" if errors else "")
        )
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
