"""Client authentication against the configured users, the credentials sluice logs in with, and
the logins the upstream is known to accept.

Only mysql_native_password is spoken to clients: its reply lets sluice both verify the client
and recover SHA1(password), which is what it needs to log in upstream as the same user with a
different scramble. sluice never stores or sees plaintext unless the config gives `password`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from .protocol.auth import native_token, recover_stage1, stage1
from .protocol.constants import SCRAMBLE_LENGTH


@dataclass(frozen=True, slots=True)
class Credential:
    """What sluice needs to log in upstream as this user: SHA1(password), or b'' for none."""

    user: str
    stage1: bytes

    def token(self, scramble: bytes) -> bytes:
        """mysql_native_password auth response for an upstream's scramble."""
        return native_token(self.stage1, scramble) if self.stage1 else b""


class UserDirectory:
    """The users a tier accepts, looked up by name; built from the config's `users` list."""

    __slots__ = ("_users",)

    def __init__(self, users: Iterable) -> None:
        # users: objects with .name, .password_hash (20-byte stage2 digest) and .password
        self._users = {u.name: u for u in users}

    def __contains__(self, name: str) -> bool:
        return name in self._users

    def authenticate(self, name: str, scramble: bytes, token: bytes) -> Credential | None:
        """The user's credential if `token` answers `scramble`, else None (unknown or wrong)."""
        user = self._users.get(name)
        if user is None:
            return None
        if user.password == "":
            return Credential(name, b"") if not token else None
        if len(token) != SCRAMBLE_LENGTH:
            return None
        s1 = recover_stage1(token, scramble, user.password_hash)
        if s1 is None:
            return None
        return Credential(name, s1)

    def credential(self, name: str) -> Credential | None:
        """A credential from a configured plaintext password (for sluice's own logins)."""
        user = self._users.get(name)
        if user is None or user.password is None:
            return None
        return Credential(name, stage1(user.password) if user.password else b"")


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
