"""The pool's queue, in-process: who waits and who is served at once."""

from __future__ import annotations

from proxy.config import parse_config
from proxy.pool import PoolKey, Waiter
from proxy.tier import Tier


class Recorder(Waiter):
    __slots__ = ("got",)

    def __init__(self) -> None:
        super().__init__()
        self.got: list[str] = []

    def served(self, conn: object) -> None:
        self.got.append("served")

    def granted(self) -> None:
        self.got.append("granted")

    def failed(self, exc: Exception) -> None:
        self.got.append(f"failed: {exc}")


async def test_a_waiter_whose_user_reached_its_share_does_not_hold_up_another_user():
    """A command queued while its user had room stays first in line when that user then
    reaches its share: it must step aside (be parked), not make another user with room
    under the cap queue behind it until some connection comes back."""
    config = parse_config(
        {
            "tier": "remote",
            "listen": ["127.0.0.1:0"],
            "users": [
                {"name": "app", "password": "a", "max_connections": 1},
                {"name": "other", "password": "b"},
            ],
            "upstream": {"servers": [{"name": "db1", "address": "127.0.0.1:3306"}]},
            "pool": {"max_connections": 2, "acquire_timeout": 60},
        },
        allow_zero_port=True,
    )
    pools = Tier(config).pools
    slots = pools.servers["db1"]
    app, other = PoolKey("db1", "app", 0, 45), PoolKey("db1", "other", 0, 45)
    first = Recorder()
    pools.enqueue(first, app)  # queued while app had room
    slots.open += 1  # then one of app's sessions opened a connection: app is at its share
    slots.claim("app")
    assert list(slots.waiters) == [first] and not slots.has_room("app")
    second = Recorder()
    assert not pools.queue_when_full(second, other), "other has room under the cap: it opens now"
    assert second.done  # (never queued)
    assert not first.got and not second.got
