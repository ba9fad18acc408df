"""Pools of upstream connections under a hard cap per upstream server.

Connections are pooled per (server, user, capability flags that change semantics or formats,
login charset): only connections with the same key are interchangeable. The cap
(`pool.max_connections`) counts every connection to a server across all its pools, open or
being opened, so the database never sees more — not in a storm, not during reconnects.

Waiters queue FIFO per server. A released connection goes to the first waiter of its server:
directly when the waiter wants the same pool, otherwise the connection is closed so that the
waiter can open one of its own. An idle connection of another pool is likewise closed to make
room when the cap is reached and nothing is idle in the wanted pool.

Waiting is callbacks, not futures: under a funnel (hundreds of clients on a few dozen
connections) most commands wait, so a waiter is an object the pool calls (`served`,
`granted`, `failed`) from the release that frees a connection. A client session queues its
own reusable waiter (no task, future or timer per command); the coroutine paths wrap a future
in one. A waiter that gives up is marked done and dropped when the queue reaches it, and one
timer per server, armed for the oldest waiter's deadline, enforces `pool.acquire_timeout`.

A user may have a share of each server's cap (`users[].max_connections`): a user at its share
opens nothing more, and its waiters step aside ("parked") so that the users behind them are
served; a connection that user gives back still goes to its own oldest waiter.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple

from . import errors
from .logs import Throttled
from .protocol.constants import Capability as C

if TYPE_CHECKING:
    from .backend import ServerConnection
    from .config import PoolConfig, ServerConfig

log = logging.getLogger("sluice.pool")
exhausted = Throttled(log)

POOL_KEY_CAPABILITIES = int(
    C.FOUND_ROWS
    | C.LONG_FLAG
    | C.NO_SCHEMA
    | C.ODBC
    | C.LOCAL_FILES
    | C.IGNORE_SPACE
    | C.INTERACTIVE
    | C.MULTI_STATEMENTS
    | C.MULTI_RESULTS
    | C.PS_MULTI_RESULTS
    | C.SESSION_TRACK
    | C.DEPRECATE_EOF
    | C.MARIADB_STMT_BULK_OPERATIONS
    | C.MARIADB_EXTENDED_TYPE_INFO
)
"""Client capabilities that make connections non-interchangeable (affected-rows meaning,
message formats, what the server accepts)."""

HEALTH_CHECK_AFTER = 10.0
"""A connection idle longer than this is pinged before it is handed out."""


class PoolKey(NamedTuple):
    """What makes pooled connections interchangeable (a tuple: hashed and compared in C, as
    it is on every command)."""

    server: str
    user: str
    capabilities: int
    charset: int


class AcquireTimeout(errors.ClientError):
    pass


class ServerRetired(Exception):
    """The server stopped being the writer while a client waited for it: wait elsewhere."""


class Waiter:
    """Queued for a connection of `key`. The pool calls exactly one of `served` (here is a
    connection, counted active), `granted` (a slot is reserved for you: take an idle
    connection or open one, see acquire(reserved=True)) or `failed`, and sets `done` first.
    A waiter that stops waiting sets `done` itself and is dropped when the queue reaches it."""

    __slots__ = ("done", "key", "since", "usable")

    def __init__(self) -> None:
        self.done = True
        self.key: PoolKey = None  # type: ignore[assignment]
        self.usable: Callable[[ServerConnection], bool] | None = None
        self.since = 0.0

    def served(self, conn: ServerConnection) -> None:
        raise NotImplementedError

    def granted(self) -> None:
        raise NotImplementedError

    def failed(self, exc: Exception) -> None:
        raise NotImplementedError


class FutureWaiter(Waiter):
    """A waiter for coroutines (logins, KILL, prepares): a future to await. It is done as
    soon as its future is (a cancelled task cancels the future it awaits at once)."""

    __slots__ = ("_done", "future")

    def __init__(self) -> None:
        self.future: asyncio.Future[ServerConnection | None] = (
            asyncio.get_running_loop().create_future()
        )
        super().__init__()

    @property  # type: ignore[override]
    def done(self) -> bool:
        return self._done or self.future.done()

    @done.setter
    def done(self, value: bool) -> None:
        self._done = value

    def served(self, conn: ServerConnection) -> None:
        self.future.set_result(conn)

    def granted(self) -> None:
        self.future.set_result(None)

    def failed(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Pool:
    """Idle connections of one key (most recently used last) and counts for SHOW POOLS."""

    __slots__ = ("active", "idle", "key", "max_wait", "opener", "waited", "warming")

    def __init__(self, key: PoolKey) -> None:
        self.key = key
        self.idle: list[ServerConnection] = []
        self.active = 0
        self.waited = 0
        self.max_wait = 0.0
        self.opener: Opener | None = None  # the last client's, to keep min_idle ready
        self.warming = 0


class ServerSlots:
    """The hard cap of one upstream server, its FIFO waiters and connect-rate budget."""

    __slots__ = (
        "_tokens",
        "_tokens_at",
        "by_user",
        "config",
        "expiry",
        "expiry_at",
        "limit",
        "open",
        "opening",
        "parked",
        "retired",
        "shares",
        "waiters",
    )

    def __init__(self, config: ServerConfig, limit: int, shares: dict[str, int]) -> None:
        self.config = config
        self.limit = limit
        self.retired = False  # no longer the writer: its connections close as they come back
        self.open = 0
        self.opening = 0
        self.waiters: collections.deque[Waiter] = collections.deque()
        self.shares = shares  # user -> its share of the cap (users without one: the whole cap)
        self.by_user: dict[str, int] = {}  # connections open or opening, per user
        self.parked: dict[str, collections.deque[Waiter]] = {}  # waiters of users at share
        self.expiry: asyncio.TimerHandle | None = None  # for the oldest waiter's deadline
        self.expiry_at = 0.0
        self._tokens = 1.0
        self._tokens_at = time.monotonic()

    @property
    def used(self) -> int:
        return self.open + self.opening

    def has_room(self, user: str) -> bool:
        """Whether `user` may have one more connection to this server (its share)."""
        share = self.shares.get(user)
        return share is None or self.by_user.get(user, 0) < share

    def claim(self, user: str) -> None:
        self.by_user[user] = self.by_user.get(user, 0) + 1

    def unclaim(self, user: str) -> None:
        """One of `user`'s connections is gone: its parked waiters may queue again, first."""
        count = self.by_user[user] - 1
        if count:
            self.by_user[user] = count
        else:
            del self.by_user[user]
        parked = self.parked.get(user)
        if parked and self.has_room(user):
            del self.parked[user]
            self.waiters.extendleft(reversed(parked))

    def park(self, waiter: Waiter) -> None:
        self.parked.setdefault(waiter.key.user, collections.deque()).append(waiter)

    def all_waiters(self) -> list[Waiter]:
        """Everyone still waiting, queued or parked (for SHOW POOLS and /status)."""
        out = [w for w in self.waiters if not w.done]
        for parked in self.parked.values():
            out += (w for w in parked if not w.done)
        return out

    def take_expired(self, deadline_since: float) -> list[Waiter]:
        """Drop waiters that gave up and take out those queued at or before
        `deadline_since` (their acquire_timeout is over); the oldest remaining `since`
        is left in `expiry_at` (0: nobody waits)."""
        expired: list[Waiter] = []
        oldest = 0.0

        def sweep(queue: collections.deque[Waiter]) -> collections.deque[Waiter]:
            nonlocal oldest
            kept: collections.deque[Waiter] = collections.deque()
            for waiter in queue:
                if waiter.done:
                    continue
                if waiter.since <= deadline_since:
                    expired.append(waiter)
                    continue
                kept.append(waiter)
                if not oldest or waiter.since < oldest:
                    oldest = waiter.since
            return kept

        self.waiters = sweep(self.waiters)
        for user in list(self.parked):
            kept = sweep(self.parked[user])
            if kept:
                self.parked[user] = kept
            else:
                del self.parked[user]
        self.expiry_at = oldest
        return expired

    def connect_delay(self, rate: float) -> float:
        """Seconds to wait before the next connect so that connects stay under `rate`/s."""
        now = time.monotonic()
        burst = max(1.0, rate / 10)
        self._tokens = min(burst, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / rate


Opener = Callable[[PoolKey], Awaitable["ServerConnection"]]


class PoolManager:
    """All pools of a tier and the per-server caps they share."""

    def __init__(
        self,
        config: PoolConfig,
        servers: tuple[ServerConfig, ...],
        shares: dict[str, int] | None = None,
    ) -> None:
        self.config = config
        self.pools: dict[PoolKey, Pool] = {}
        self.shares: dict[str, int] = dict(shares or {})  # shared by every server's slots
        self.servers = {
            s.name: ServerSlots(s, config.max_connections, self.shares) for s in servers
        }
        self.baselines: dict[PoolKey, dict[str, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # min_idle connections being opened
        """Per pool: login values of the variables a fresh connection does not take from the
        server's globals (the character set ones), to restore them without reconnecting."""

    def pool(self, key: PoolKey) -> Pool:
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(key)
        return pool

    # --- acquiring ----------------------------------------------------------------------------

    def take_idle_exact(
        self, key: PoolKey | None, state: object, session_id: int = 0, now: float = 0.0
    ) -> ServerConnection | None:
        """The hot path: an idle connection already in `state` that needs no health check.

        The most recently used (warm) comes first, unless it carries another session's
        warnings or errors (acquire() cleans those). No scan past the first that fits: a
        statement that reads what the previous one left asks for that connection itself
        (take_specific)."""
        pool = self.pools.get(key)  # type: ignore[arg-type]
        if pool is None or not pool.idle:
            return None  # (the funnel's steady state: every connection busy)
        idle = pool.idle
        fresh = (now or time.monotonic()) - HEALTH_CHECK_AFTER
        found = -1
        for i in range(len(idle) - 1, -1, -1):
            conn = idle[i]
            if conn.last_used < fresh:
                break  # older ones are staler still: acquire() health-checks them
            if (  # (== is SessionState.__eq__; != would go through a slower default __ne__)
                conn.state == state
                and not conn.closed
                and (not conn.diagnostics or conn.last_session == session_id)
            ):
                found = i
                break
        if found < 0:
            return None
        conn = idle.pop(found)
        pool.active += 1
        return conn

    def take_specific(self, conn: ServerConnection) -> bool:
        """Take this very connection if it sits idle (for a client's follow-up statement)."""
        pool = self.pools.get(conn.pool_key)
        if pool is None or conn.closed or conn not in pool.idle:
            return False
        pool.idle.remove(conn)
        pool.active += 1
        return True

    def take_idle(
        self,
        key: PoolKey,
        prefer: Callable[[ServerConnection], bool],
        usable: Callable[[ServerConnection], bool] | None = None,
    ) -> ServerConnection | None:
        """An idle connection of `key` at once (one that `prefer`s first, and only a
        `usable` one), or None."""
        pool = self.pools.get(key)
        if pool is None or not pool.idle:
            return None
        idle = pool.idle
        fallback = -1
        for i in range(len(idle) - 1, -1, -1):
            if prefer(idle[i]):
                conn = idle.pop(i)
                break
            if fallback < 0 and (usable is None or usable(idle[i])):
                fallback = i
        else:
            if fallback < 0:
                return None
            conn = idle.pop(fallback)
        pool.active += 1
        return conn

    def _evict_unusable(self, key: PoolKey, usable: Callable[[ServerConnection], bool]) -> bool:
        """Close an idle connection of `key` that this client cannot use, making room."""
        pool = self.pools.get(key)
        for conn in pool.idle if pool is not None else ():
            if not usable(conn):
                pool.idle.remove(conn)  # type: ignore[union-attr]
                self._close(conn)
                return True
        return False

    async def acquire(
        self,
        key: PoolKey,
        opener: Opener,
        prefer: Callable[[ServerConnection], bool],
        usable: Callable[[ServerConnection], bool] | None = None,
        *,
        wait: bool = True,
        reserved: bool = False,
    ) -> ServerConnection | None:
        """A connection of `key`: idle, newly opened under the cap, or handed over in turn.

        `usable` excludes idle connections this client cannot be brought in line with (a
        client without a default database cannot use one that has a schema selected).
        Without `wait`, None instead of queueing (a login checks on a free connection or
        not at all). With `reserved`, the caller holds a slot a waiter was `granted`."""
        pool = self.pool(key)
        pool.opener = opener
        slots = self.servers[key.server]
        if slots.retired:
            if reserved:
                self.unreserve(key)
            raise ServerRetired(key.server)
        # A waiter woken for a freed slot holds it (counted in `opening`).
        while True:
            if reserved or self._first_waiter(slots) is None:
                conn = self.take_idle(key, prefer, usable)
                if conn is not None:
                    if reserved:
                        reserved = False
                        self.unreserve(key)
                    if await self._healthy(conn):
                        return conn
                    self._lost_active(conn)
                    continue
                if not reserved and not slots.has_room(key.user):
                    # At its share: only room among its own connections helps.
                    if usable is not None and self._evict_unusable(key, usable):
                        continue
                elif (
                    not reserved
                    and slots.used >= slots.limit
                    and not self._evict_idle(slots, not_key=key)
                    and usable is not None
                ):
                    self._evict_unusable(key, usable)
                if reserved or (slots.used < slots.limit and slots.has_room(key.user)):
                    return await self._open(key, slots, pool, opener, reserved)
            if not wait:
                return None
            conn = await self._wait(key, slots, pool, usable)
            if conn is not None:
                return conn
            reserved = True

    async def _healthy(self, conn: ServerConnection) -> bool:
        if conn.closed:
            return False
        if time.monotonic() - conn.last_used < HEALTH_CHECK_AFTER:
            return True
        try:
            await asyncio.wait_for(conn.ping(), 2.0)
            return True
        except Exception as exc:
            log.info("upstream %s connection failed its health check: %s", conn.server_name, exc)
            conn.abort()
            return False

    async def _open(
        self, key: PoolKey, slots: ServerSlots, pool: Pool, opener: Opener, reserved: bool
    ) -> ServerConnection:
        if not reserved:
            slots.opening += 1
            slots.claim(key.user)
        try:
            delay = slots.connect_delay(self.config.connect_rate)
            if delay:
                await asyncio.sleep(delay)
            conn = await opener(key)
        except BaseException:
            slots.opening -= 1
            slots.unclaim(key.user)
            self._wake_next(slots)
            raise
        slots.opening -= 1
        slots.open += 1
        pool.active += 1
        conn.pool_key = key
        conn.opened_at = conn.last_used = time.monotonic()
        conn.on_lost = self._on_lost
        return conn

    async def _wait(
        self,
        key: PoolKey,
        slots: ServerSlots,
        pool: Pool,
        usable: Callable[[ServerConnection], bool] | None = None,
    ) -> ServerConnection | None:
        """Queue for this server; returns a handed-over connection, or None for a reserved slot."""
        waiter = FutureWaiter()
        self.enqueue(waiter, key, usable, 0.0, slots)
        try:
            return await waiter.future
        except asyncio.CancelledError:  # the client went away while waiting
            future = waiter.future
            if not waiter.done:
                waiter.done = True  # dropped when the queue reaches it
            elif future.done() and not future.cancelled() and future.exception() is None:
                got = future.result()
                if got is None:
                    self.unreserve(key)  # give back the slot reserved for us
                else:
                    self.release(got)
            raise

    def queue_when_full(
        self,
        waiter: Waiter,
        key: PoolKey,
        usable: Callable[[ServerConnection], bool] | None = None,
        now: float = 0.0,
    ) -> bool:
        """Queue `waiter` for a connection of `key` if acquire() would wait: others wait
        ahead, or the cap and the client's share are used up with nothing idle to close for
        room. False (not queued) when acquire() would take an idle connection or open one
        now. The funnel's hot path: no scan while others wait ahead. `now`: the caller's
        time.monotonic(), if it has one."""
        slots = self.servers[key.server]
        if slots.retired:
            return False  # (acquire() says why)
        waiters = slots.waiters
        ahead = waiters and (
            (not slots.shares and not waiters[0].done)  # (the common case, without a call)
            or self._first_waiter(slots) is not None  # (one at its share steps aside)
        )
        if not ahead:
            pool = self.pools.get(key)
            if pool is not None and pool.idle:
                return False  # take one (or close one this client cannot use, for room)
            if slots.has_room(key.user):
                if slots.used < slots.limit:
                    return False
                if any(p.idle and p.key.server == key.server for p in self.pools.values()):
                    return False  # the least recently used idle connection makes room
        self.enqueue(waiter, key, usable, now, slots)
        return True

    def enqueue(
        self,
        waiter: Waiter,
        key: PoolKey,
        usable: Callable[[ServerConnection], bool] | None = None,
        now: float = 0.0,
        slots: ServerSlots | None = None,
    ) -> None:
        """Queue `waiter` for a connection of `key` (FIFO per server). `now`: the caller's
        time.monotonic(), `slots`: its server's, if it has them."""
        if slots is None:
            slots = self.servers[key.server]
        now = now or time.monotonic()
        waiter.key = key
        waiter.usable = usable
        waiter.done = False
        waiter.since = now
        if not slots.shares or slots.has_room(key.user):
            slots.waiters.append(waiter)
        else:
            slots.park(waiter)  # at its share: only its own connections can serve it
        (self.pools.get(key) or self.pool(key)).waited += 1
        # The expiry timer is armed for the oldest waiter: only a waiter older than that one
        # (a parked one, or an empty queue) moves it.
        if slots.expiry is None or slots.expiry_at > now:
            self._arm_expiry(slots, now)

    def _arm_expiry(self, slots: ServerSlots, oldest: float) -> None:
        if slots.expiry is not None:
            slots.expiry.cancel()
        slots.expiry_at = oldest
        slots.expiry = asyncio.get_running_loop().call_at(
            oldest + self.config.acquire_timeout, self._expire_due, slots
        )

    def _expire_due(self, slots: ServerSlots) -> None:
        """The oldest waiter's deadline: fail everyone whose acquire_timeout is over."""
        slots.expiry = None
        timeout = self.config.acquire_timeout
        now = time.monotonic()
        expired = slots.take_expired(now - timeout)
        if slots.expiry_at:
            self._arm_expiry(slots, slots.expiry_at)
        if not expired:
            return
        waiting = len(slots.all_waiters())
        exhausted.log(
            logging.WARNING,
            slots.config.name,
            "pool exhausted: %d clients waited %gs for a connection to %s (all %d in use, %d "
            "still waiting)",
            len(expired),
            timeout,
            slots.config.name,
            slots.limit,
            waiting,
        )
        for waiter in expired:  # (after the sweep: a failed waiter may queue again)
            key = waiter.key
            share = slots.shares.get(key.user)
            if share is not None and not slots.has_room(key.user):
                why = (
                    f"user '{key.user}' has all {share} connections of its share "
                    "(users[].max_connections) in use"
                )
            else:
                why = (
                    f"all {slots.limit} allowed connections are busy and "
                    f"{waiting + len(expired) - 1} other clients are waiting"
                )
            if waiter.done:
                continue  # gave up meanwhile (a session the failures before it closed)
            self._done_waiting(waiter, now)
            waiter.failed(
                AcquireTimeout(
                    errors.ErrorCode.CON_COUNT_ERROR,
                    f"no upstream connection to '{key.server}' for user '{key.user}' within "
                    f"{timeout:g}s: {why}; retry, shorten transactions, or raise "
                    "pool.max_connections if the database allows",
                )
            )

    def _done_waiting(self, waiter: Waiter, now: float) -> None:
        waiter.done = True
        pool = self.pools.get(waiter.key)
        if pool is not None and now - waiter.since > pool.max_wait:
            pool.max_wait = now - waiter.since

    def unreserve(self, key: PoolKey) -> None:
        """Give back a slot a waiter was granted and did not use."""
        slots = self.servers[key.server]
        slots.opening -= 1
        slots.unclaim(key.user)
        self._wake_next(slots)

    # --- releasing ----------------------------------------------------------------------------

    def release(self, conn: ServerConnection, now: float = 0.0) -> None:
        """Return a clean connection: to the first waiter of its server, else to idle.
        `now`: the caller's time.monotonic(), if it has one."""
        key = conn.pool_key
        pool = self.pools[key]
        pool.active -= 1
        conn.last_used = now = now or time.monotonic()
        if conn.closed:
            self._closed(conn)
            return
        slots = self.servers[key.server]
        if slots.open > slots.limit or slots.retired:  # a lowered cap, or a switchover
            self._close(conn)
            return
        if slots.waiters or slots.parked:
            queue = slots.waiters
            if queue and not slots.shares and not queue[0].done:
                waiter: Waiter | None = queue[0]  # (the common case, without a call)
            else:
                waiter = self._first_waiter(slots, key)
            if slots.parked:
                own = self._first_parked(slots, key)  # its user is at share: it waits for this
                if own is not None and (waiter is None or own.since <= waiter.since):
                    waiter = own
                    queue = slots.parked[key.user]
            if waiter is not None:
                if waiter.key == key and (waiter.usable is None or waiter.usable(conn)):
                    queue.popleft()  # (the first of its queue: _first_waiter/_first_parked)
                    pool.active += 1
                    waiter.done = True
                    if now - waiter.since > pool.max_wait:
                        pool.max_wait = now - waiter.since
                    waiter.served(conn)
                    return
                # The next in line needs another pool (or a connection without a schema):
                # make room for it.
                self._close(conn)
                return
        if now - conn.opened_at > self.config.max_lifetime > 0:
            self._close(conn)
            return
        pool.idle.append(conn)

    def discard(self, conn: ServerConnection) -> None:
        """An active connection that must not be reused (dirty, failed): close it."""
        pool = self.pools[conn.pool_key]
        pool.active -= 1
        self._close(conn)

    def _lost_active(self, conn: ServerConnection) -> None:
        self.pools[conn.pool_key].active -= 1
        self._closed(conn)

    def _close(self, conn: ServerConnection) -> None:
        conn.on_lost = None
        conn.close()
        self._closed(conn)

    def _closed(self, conn: ServerConnection) -> None:
        """Account for a connection that is gone, and let the next waiter use its slot."""
        if conn.pool_key is None or conn.counted_closed:
            return
        conn.counted_closed = True
        slots = self.servers[conn.pool_key.server]
        slots.open -= 1
        slots.unclaim(conn.pool_key.user)
        self._wake_next(slots)

    def _on_lost(self, conn: ServerConnection) -> None:
        """Called by a connection whose socket closed; drop it if it sat idle."""
        pool = self.pools.get(conn.pool_key)  # type: ignore[arg-type]
        if pool is not None and conn in pool.idle:
            pool.idle.remove(conn)
            self._closed(conn)

    def _first_waiter(self, slots: ServerSlots, key: PoolKey | None = None) -> Waiter | None:
        """The first waiter that can be served: one whose user is at its share steps aside
        (is parked) unless it waits for `key`, the pool of the connection being handed on."""
        waiters = slots.waiters
        if not slots.shares:  # no user has a share: the first still waiting
            while waiters:
                waiter = waiters[0]
                if not waiter.done:
                    return waiter
                waiters.popleft()
            return None
        while waiters:
            waiter = waiters[0]
            if waiter.done:
                waiters.popleft()
            elif waiter.key != key and not slots.has_room(waiter.key.user):
                slots.park(waiters.popleft())
            else:
                return waiter
        return None

    @staticmethod
    def _first_parked(slots: ServerSlots, key: PoolKey) -> Waiter | None:
        parked = slots.parked.get(key.user)
        while parked:
            waiter = parked[0]
            if not waiter.done:
                return waiter if waiter.key == key else None
            parked.popleft()
        return None

    def _wake_next(self, slots: ServerSlots) -> None:
        """A slot is free: let the first waiter open (or take) a connection."""
        if slots.used >= slots.limit or slots.retired:
            return
        waiter = self._first_waiter(slots)
        if waiter is not None:
            slots.waiters.popleft()
            slots.opening += 1  # reserved for this waiter
            slots.claim(waiter.key.user)
            self._done_waiting(waiter, time.monotonic())
            waiter.granted()

    def _evict_idle(self, slots: ServerSlots, not_key: PoolKey) -> bool:
        """Close the least recently used idle connection of another pool of this server."""
        oldest: ServerConnection | None = None
        for pool in self.pools.values():
            if (
                pool.key.server == slots.config.name
                and pool.key != not_key
                and pool.idle
                and (oldest is None or pool.idle[0].last_used < oldest.last_used)
            ):
                oldest = pool.idle[0]
        if oldest is None:
            return False
        self.pools[oldest.pool_key].idle.remove(oldest)
        self._close(oldest)
        return True

    # --- upkeep (the janitor calls this every second) -----------------------------------------

    def expire_idle(self) -> int:
        """Close idle connections past idle_timeout (keeping min_idle) or max_lifetime."""
        now = time.monotonic()
        closed = 0
        cfg = self.config
        for pool in self.pools.values():
            keep = pool.idle[-cfg.min_idle :] if cfg.min_idle else []
            for conn in list(pool.idle):
                too_old = cfg.max_lifetime > 0 and now - conn.opened_at > cfg.max_lifetime
                too_idle = cfg.idle_timeout > 0 and now - conn.last_used > cfg.idle_timeout
                if too_old or (too_idle and conn not in keep):
                    pool.idle.remove(conn)
                    self._close(conn)
                    closed += 1
        return closed

    def top_up(self) -> None:
        """Open connections so that pools in use keep `min_idle` ready, within the cap and
        never ahead of a waiting client (the janitor calls this)."""
        want = self.config.min_idle
        if not want:
            return
        loop = asyncio.get_running_loop()
        for pool in self.pools.values():
            slots = self.servers[pool.key.server]
            while (
                not slots.retired
                and pool.opener is not None
                and len(pool.idle) + pool.warming < want
                and slots.used < slots.limit
                and slots.has_room(pool.key.user)
                and not slots.waiters
                and not slots.parked
            ):
                pool.warming += 1
                task = loop.create_task(self._prewarm(pool, slots))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _prewarm(self, pool: Pool, slots: ServerSlots) -> None:
        try:
            conn = await self._open(pool.key, slots, pool, pool.opener, reserved=False)  # type: ignore[arg-type]
        except Exception as exc:
            log.info("could not open a min_idle connection to %s: %s", pool.key.server, exc)
            return
        finally:
            pool.warming -= 1
        self.release(conn)

    def reconfigure(self, config: PoolConfig) -> None:
        """Apply a reloaded pool config. A lower cap is reached by closing idle connections
        now and busy ones as they come back; the server never sees more than before."""
        self.config = config
        for slots in self.servers.values():
            slots.limit = config.max_connections
            excess = slots.open - slots.limit
            for pool in self.pools.values():
                while excess > 0 and pool.key.server == slots.config.name and pool.idle:
                    self._close(pool.idle.pop(0))
                    excess -= 1
            while slots.used < slots.limit and self._first_waiter(slots) is not None:
                self._wake_next(slots)  # a higher cap: waiters may open now

    def set_shares(self, shares: dict[str, int]) -> None:
        """Apply reloaded per-user shares; connections above a lowered share close as they
        come back (release closes what a waiter of another user needs)."""
        self.shares.clear()
        self.shares.update(shares)
        for slots in self.servers.values():
            for user in [u for u in slots.parked if slots.has_room(u)]:
                slots.waiters.extendleft(reversed(slots.parked.pop(user)))
            while slots.used < slots.limit and self._first_waiter(slots) is not None:
                self._wake_next(slots)

    def retire(self, server: str) -> None:
        """`server` stopped being the writer: close its idle connections now and its busy
        ones when they are released."""
        slots = self.servers[server]
        slots.retired = True
        waiters = slots.all_waiters()
        slots.waiters.clear()
        slots.parked.clear()
        now = time.monotonic()
        for waiter in waiters:  # queued for the old writer: re-queue for the new
            self._done_waiting(waiter, now)
            waiter.failed(ServerRetired(server))
        for pool in self.pools.values():
            if pool.key.server == server:
                for conn in pool.idle:
                    self._close(conn)
                pool.idle.clear()

    def add_server(self, server: ServerConfig) -> None:
        """A server that joined (a remote tier found in the fleet): it may get connections."""
        slots = self.servers.get(server.name)
        if slots is None:
            self.servers[server.name] = ServerSlots(
                server, self.config.max_connections, self.shares
            )
        else:
            slots.config = server
            slots.retired = False

    def reinstate(self, server: str) -> None:
        """`server` is the writer (again): its pools may keep connections."""
        self.servers[server].retired = False

    def idle_on_thread(self, thread_id: int) -> ServerConnection | None:
        """The idle connection whose server thread id is `thread_id` (for KILL n)."""
        for pool in self.pools.values():
            for conn in pool.idle:
                if conn.thread_id == thread_id and not conn.closed:
                    return conn
        return None

    def close_idle_connection(self, conn: ServerConnection) -> None:
        pool = self.pools.get(conn.pool_key)
        if pool is not None and conn in pool.idle:
            pool.idle.remove(conn)
            self._close(conn)

    def close_idle(self, server: str) -> None:
        """Close the idle connections to `server` (it stopped answering: they would hang)."""
        for pool in self.pools.values():
            if pool.key.server == server:
                for conn in pool.idle:
                    self._close(conn)
                pool.idle.clear()

    def close_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for pool in self.pools.values():
            for conn in pool.idle:
                self._close(conn)
            pool.idle.clear()
