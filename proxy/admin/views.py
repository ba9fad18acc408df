"""What the admin port, /status and /metrics report, read from a tier's state in one place.

Everything here runs on the tier's event loop at the moment someone asks (a SHOW command, a
scrape), so the data path never pays for observability: the numbers are the live objects' own
(pools, server slots, sessions), not counters kept alongside them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import config_to_dict
from ..frontend import CLOSED, STATE_NAMES

if TYPE_CHECKING:
    from ..tier import Tier

LIVE_STATES = tuple(name for i, name in enumerate(STATE_NAMES) if i != CLOSED)
"""Client session states worth reporting (a closed session leaves tier.sessions at once)."""

ROLE_UNKNOWN = "unknown"
"""No writer discovery has asked this server (local tiers, or no upstream.monitor)."""


@dataclass(frozen=True, slots=True)
class PoolRow:
    """One (server, user) pool; pools that differ only in capability flags or charset add up."""

    server: str
    user: str
    active: int
    idle: int
    waiting: int
    max_wait_ms: int
    cap: int
    oldest_wait_ms: int  # how long the longest waiting client has waited so far
    idle_in_transaction_ms: int  # the longest a client holding a connection sat idle in a
    # transaction (pool.idle_transaction_timeout bounds it)


@dataclass(frozen=True, slots=True)
class ClientRow:
    id: int
    user: str
    address: str
    state: str
    pinned_reason: str
    upstream: str  # "server:thread_id" while the session holds a connection, else ""


@dataclass(frozen=True, slots=True)
class ServerRow:
    name: str
    address: str
    role: str
    health: str  # "ok", "unreachable: why", or "unknown" (no monitor account)
    read_only: str | None  # "yes" / "no" as the server said; None when not asked
    lag_s: float | None  # a replica's Seconds_Behind_Master
    open: int
    opening: int
    limit: int
    waiters: int


def pool_rows(tier: Tier) -> list[PoolRow]:
    """Every (server, user) pool, configured ones included before any traffic (with zeros)."""
    now = time.monotonic()
    # active, idle, waiting, max_wait, oldest wait, longest idle transaction
    totals: dict[tuple[str, str], list[float]] = {
        (server.name, user.name): [0, 0, 0, 0.0, 0.0, 0.0]
        for server in tier.upstream.servers
        for user in tier.config.users
    }
    for key, pool in tier.pools.pools.items():
        row = totals.setdefault((key.server, key.user), [0, 0, 0, 0.0, 0.0, 0.0])
        row[0] += pool.active
        row[1] += len(pool.idle)
        row[3] = max(row[3], pool.max_wait)
    for slots in tier.pools.servers.values():
        for waiter in slots.all_waiters():
            row = totals.setdefault((waiter.key.server, waiter.key.user), [0, 0, 0, 0.0, 0.0, 0.0])
            row[2] += 1
            row[4] = max(row[4], now - waiter.since)
    for session in list(tier.sessions.values()):
        idle = session.idle_in_transaction(now)
        if idle and session.backend is not None:
            row = totals.setdefault(
                (session.backend.server_name, session.user), [0, 0, 0, 0.0, 0.0, 0.0]
            )
            row[5] = max(row[5], idle)
    out = []
    for (server, user), (active, idle, waiting, max_wait, oldest, idle_trans) in sorted(
        totals.items()
    ):
        slots = tier.pools.servers.get(server)
        out.append(
            PoolRow(
                server=server,
                user=user,
                active=int(active),
                idle=int(idle),
                waiting=int(waiting),
                max_wait_ms=round(max(max_wait, oldest) * 1000),
                cap=slots.limit if slots is not None else 0,
                oldest_wait_ms=round(oldest * 1000),
                idle_in_transaction_ms=round(idle_trans * 1000),
            )
        )
    return out


def client_rows(tier: Tier) -> list[ClientRow]:
    out = []
    for session in list(tier.sessions.values()):
        backend = session.backend
        upstream = f"{backend.server_name}:{backend.thread_id}" if backend is not None else ""
        out.append(
            ClientRow(
                id=session.id,
                user=session.user,
                address=session.peer,
                state=STATE_NAMES[session.state],
                pinned_reason=session.pinned or "",
                upstream=upstream,
            )
        )
    return out


def server_rows(tier: Tier) -> list[ServerRow]:
    out = []
    for server in tier.upstream.servers:
        slots = tier.pools.servers.get(server.name)
        probe = tier.upstream.probes.get(server.name)
        if probe is None:
            health, read_only = ROLE_UNKNOWN, None
        elif probe.problem is not None:
            health, read_only = f"unreachable: {probe.problem}", None
        else:
            health, read_only = "ok", "yes" if probe.read_only else "no"
        watched = tier.health.servers.get(server.name) if tier.health is not None else None
        if watched is not None and watched.state != "unknown":
            health = watched.describe()  # the health probes' word is the fresher one
        out.append(
            ServerRow(
                name=server.name,
                address=str(server.address),
                role=tier.upstream.roles.get(server.name, ROLE_UNKNOWN),
                health=health,
                read_only=read_only,
                lag_s=probe.lag if probe is not None else None,
                open=slots.open if slots else 0,
                opening=slots.opening if slots else 0,
                limit=slots.limit if slots else 0,
                waiters=len(slots.all_waiters()) if slots else 0,
            )
        )
    return out


def sessions_by_state(tier: Tier) -> dict[str, int]:
    counts = dict.fromkeys(LIVE_STATES, 0)
    for session in list(tier.sessions.values()):
        name = STATE_NAMES[session.state]
        if name in counts:
            counts[name] += 1
    return counts


def pinned_by_reason(tier: Tier) -> dict[str, int]:
    """Sessions pinned right now, by reason (tier.pins counts every pin since start)."""
    counts: dict[str, int] = {}
    for session in list(tier.sessions.values()):
        if session.pinned:
            counts[session.pinned] = counts.get(session.pinned, 0) + 1
    return counts


def fleet_rows(tier: Tier) -> list[tuple[object, ...]]:
    """The live members of this tier's fleet (the last reading from etcd), with how etcd
    answers this tier; empty without fleet.etcd."""
    fleet = tier.fleet
    if fleet is None:
        return []
    return [
        (m["name"], m["tier"], m["address"], m["admin"], m["pool_max_connections"], fleet.etcd)
        for m in fleet.members
    ]


def config_rows(tier: Tier) -> list[tuple[str, str]]:
    """The running config, secrets redacted, as (key path, value) pairs."""
    rows: list[tuple[str, str]] = []
    _flatten(config_to_dict(tier.config, redact=True), "", rows)
    return rows


def _flatten(value: object, path: str, out: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _flatten(item, f"{path}[{i}]", out)
    elif isinstance(value, float) and value.is_integer():
        out.append((path, str(int(value))))
    else:
        out.append((path, str(value)))
