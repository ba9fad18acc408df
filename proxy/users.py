"""The configured users, what sluice knows of their passwords, the credentials it logs in
upstream with, the logins the upstream is known to accept, and the slow-down for failures.

A user is configured with a plaintext `password` (every plugin, both directions) or only the
`password_hash` mysql.user keeps for mysql_native_password (SHA1(SHA1(password))). From a
native login sluice recovers SHA1(password), which is enough to log in upstream with native;
a caching_sha2 full authentication gives it the password itself, and with it the fast path's
cache entry for the next logins. What a login teaches is kept in memory only, per user, for
the life of the process (or until a reload changes the user).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from .protocol.auth import native_token
from .protocol.plugins import Account, Secrets, sha2_entry_of


@dataclass(frozen=True, slots=True)
class Credential:
    """Who sluice logs in upstream as, and what it knows of the password."""

    user: str
    secrets: Secrets

    @classmethod
    def of_password(cls, user: str, password: str) -> Credential:
        return cls(user, Secrets.of_password(password.encode()))

    def token(self, scramble: bytes) -> bytes:
        """mysql_native_password auth response for an upstream's scramble."""
        s1 = self.secrets.stage1
        return native_token(s1, scramble) if s1 else b""


class UserDirectory:
    """The users a tier accepts, by name, with what logins taught about their passwords."""

    __slots__ = ("_learned", "_users")

    def __init__(self, users: Iterable) -> None:
        # users: objects with .name, .password_hash (20-byte stage2 digest) and .password
        self._users = {u.name: u for u in users}
        self._learned: dict[str, Secrets] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._users

    def account(self, name: str) -> Account | None:
        """The user as an auth exchange needs it, or None for an unknown user."""
        user = self._users.get(name)
        if user is None:
            return None
        known = Secrets.of_password(user.password.encode()) if user.password is not None else None
        secrets = (known or Secrets()).merged(self._learned.get(name))
        return Account(name, user.password_hash, secrets, sha2_entry_of(secrets))

    def learn(self, name: str, secrets: Secrets) -> Credential:
        """A login of `name` succeeded and revealed `secrets`: keep them for the next logins
        (the fast path, and upstream logins of users configured with a hash only)."""
        merged = secrets.merged(self._learned.get(name))
        if name in self._users:
            self._learned[name] = merged
        account = self.account(name)
        return Credential(name, account.known if account is not None else merged)

    def credential(self, name: str) -> Credential | None:
        """A credential from a configured plaintext password (for sluice's own logins)."""
        user = self._users.get(name)
        if user is None or user.password is None:
            return None
        return Credential.of_password(name, user.password)


class KnownLogins:
    """(server, user, schema) logins the upstream accepted lately, so a login with one needs
    no upstream connection (and never waits for the pool).

    Bounded (least recently confirmed dropped first) and expiring: a schema dropped or a
    grant revoked upstream is noticed at the next login after `ttl`, and before that at the
    session's first command, which then gets the database's error and ends the session."""

    __slots__ = ("_entries", "limit", "ttl")

    def __init__(self, ttl: float = 300.0, limit: int = 10_000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._entries: OrderedDict[tuple[str, str, str | None], float] = OrderedDict()

    def accepted(self, server: str, user: str, schema: str | None) -> bool:
        at = self._entries.get((server, user, schema))
        return at is not None and time.monotonic() - at < self.ttl

    def remember(self, server: str, user: str, schema: str | None) -> None:
        key = (server, user, schema)
        self._entries[key] = time.monotonic()
        self._entries.move_to_end(key)
        if len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def forget(self, server: str, user: str, schema: str | None) -> None:
        self._entries.pop((server, user, schema), None)

    def __len__(self) -> int:
        return len(self._entries)


class FailureDelays:
    """auth.failure_delay: per source address, failed logins beyond `after` wait longer and
    longer (doubling from 100 ms, up to `max`) before their error; a success resets it. Like
    MySQL's connection_control, it turns a password-guessing loop from hundreds of attempts a
    second into one every `max` seconds, without locking anyone out."""

    __slots__ = ("_failures", "after", "limit", "max")

    FIRST = 0.1

    def __init__(self, after: int, maximum: float, limit: int = 10_000) -> None:
        self.after = after
        self.max = maximum
        self.limit = limit
        self._failures: OrderedDict[str, int] = OrderedDict()

    def failed(self, source: str) -> float:
        """Count a failure; returns how long its error should wait."""
        count = self._failures.pop(source, 0) + 1
        self._failures[source] = count
        if len(self._failures) > self.limit:
            self._failures.popitem(last=False)
        over = count - self.after
        if over <= 0 or self.max <= 0:
            return 0.0
        return min(self.max, self.FIRST * 2 ** (over - 1))

    def succeeded(self, source: str) -> None:
        self._failures.pop(source, None)
