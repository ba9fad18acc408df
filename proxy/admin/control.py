"""What the admin buttons do, shared by the admin SQL port and the HTTP controls."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..fleet import FleetError
from ..switchover import Switchover, SwitchoverFailed

if TYPE_CHECKING:
    from ..config import ServerConfig
    from ..tier import Tier

log = logging.getLogger("sluice.admin")


class ControlRefused(Exception):
    """The control was not applied; the message says why and what to do."""


def resume(tier: Tier) -> float:
    """RESUME; returns how long the gate was closed. Refused while a switchover runs: it
    resumes by itself, and resuming before its promotion would send writes to a read-only
    primary."""
    running = tier.switchover
    if running is not None:
        raise ControlRefused(
            f"sluice: switchover {running.id} to {running.target} is running and resumes by "
            "itself (every step is bounded); see SHOW SWITCHOVERS"
        )
    return tier.gate.resume()


async def switchover(
    tier: Tier, target: str, peers: list[str]
) -> tuple[Switchover | None, str | None]:
    """Run a switchover to `target`: (its record, None) or (record or None, why it failed)."""
    run = Switchover(tier, target, peers)
    try:
        await run.run()
    except SwitchoverFailed as exc:
        refused = tier.switchover is not None and tier.switchover is not run
        return (None if refused else run), f"sluice: switchover to {target}: {exc}"
    return run, None


def retarget(tier: Tier, target: str) -> tuple[str | None, str]:
    """Send new work to `target` (a server name or its address) from now on: what an
    external orchestrator calls after it moved the primary. Returns (was, now)."""
    if tier.config.tier != "remote":
        raise ControlRefused(
            "sluice: a local tier spreads work over all its remote tiers; retarget remote tiers"
        )
    server = _server(tier, target)
    was = tier.upstream.current
    tier.retarget(server)
    if was != server:
        log.warning(
            "admin: new work goes to %s (was %s) by request",
            server.name,
            was.name if was is not None else "nobody",
        )
    return (was.name if was is not None else None), server.name


async def retarget_by_request(tier: Tier, target: str) -> tuple[str | None, str]:
    """RETARGET TO / POST /retarget: with fleet.etcd, first record `target` as the fleet's
    writer at the next epoch (under the fleet's lock), so that no tier fences the server an
    orchestrator just promoted; then retarget."""
    fleet = tier.fleet
    if fleet is not None and tier.config.tier == "remote":
        server = _server(tier, target)
        try:
            async with fleet.lock(f"retarget to {server.name}"):
                await fleet.hand_over(None, server.name)
        except FleetError as exc:
            raise ControlRefused(f"sluice: retarget to {server.name}: {exc}") from None
    return retarget(tier, target)


def _server(tier: Tier, target: str) -> ServerConfig:
    servers = tier.config.upstream.servers
    for server in servers:
        if target in (server.name, str(server.address)):
            return server
    names = ", ".join(f"{s.name} ({s.address})" for s in servers)
    raise ControlRefused(f"sluice: no server '{target}'; this tier's servers are {names}")
