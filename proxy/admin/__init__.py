"""The admin side of a tier: the admin SQL port (mysql-mimic), HTTP endpoints and metrics.

Everything here runs on the tier's event loop and reads the tier's live state when asked; the
data path knows nothing about it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..tier import Tier
    from .http import HttpAdmin
    from .sql import SqlAdmin


class AdminServers:
    """The admin endpoints `admin.mysql` and `admin.http` of one tier (each optional)."""

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self.sql: SqlAdmin | None = None
        self.http: HttpAdmin | None = None
        self._unix_paths: list[str] = []

    async def start(self) -> None:
        from ..tier import _remove_stale_socket

        admin = self.tier.config.admin
        for address in (admin.mysql, admin.http):
            if address is not None and address.kind == "unix":
                _remove_stale_socket(address.path)
                self._unix_paths.append(address.path)
        try:
            if admin.mysql is not None:
                from .sql import SqlAdmin  # mysql-mimic and sqlglot load only when used

                sql = SqlAdmin(self.tier)
                await sql.start(admin.mysql)
                self.sql = sql
            if admin.http is not None:
                from .http import HttpAdmin

                http = HttpAdmin(self.tier)
                await http.start(admin.http)
                self.http = http
        except BaseException:
            await self.stop()
            raise

    def addresses(self) -> dict[str, str]:
        """Where the admin endpoints actually listen (ports resolved when the config said 0)."""
        out: dict[str, str] = {}
        if self.sql is not None:
            out["mysql"] = _address(self.sql.sockets())
        if self.http is not None and self.http.server is not None:
            out["http"] = _address(self.http.server.sockets)
        return out

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.stop()
            self.http = None
        if self.sql is not None:
            await self.sql.stop()
            self.sql = None
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._unix_paths.clear()


def _address(sockets: Iterable[Any]) -> str:
    for sock in sockets:
        name = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            return f"unix:{name}"
        if sock.family == socket.AF_INET6:
            return f"[{name[0]}]:{name[1]}"
        return f"{name[0]}:{name[1]}"
    return ""
