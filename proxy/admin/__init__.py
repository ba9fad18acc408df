"""The admin side of a tier: the admin SQL port (mysql-mimic), HTTP endpoints and metrics.

Everything here runs on the tier's event loop and reads the tier's live state when asked; the
data path knows nothing about it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..tls import server_context

if TYPE_CHECKING:
    from ..tier import Tier
    from .http import HttpAdmin
    from .sql import SqlAdmin


log = logging.getLogger("sluice.admin")


class AdminServers:
    """The admin endpoints `admin.mysql` and `admin.http` of one tier (each optional)."""

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self.sql: SqlAdmin | None = None
        self.http: HttpAdmin | None = None
        self.tls: ssl.SSLContext | None = None
        self._unix_paths: list[str] = []

    async def start(self) -> None:
        from ..tier import _remove_stale_socket

        admin = self.tier.config.admin
        for address in (admin.mysql, admin.http):
            if address is not None and address.kind == "unix":
                _remove_stale_socket(address.path)
                self._unix_paths.append(address.path)
            elif address is not None and admin.tls is None and not _loopback(address.host):
                log.warning(
                    "admin endpoint %s is reachable from the network without TLS: the token "
                    "and the admin password travel in clear; set admin.tls",
                    address,
                )
        self.tls = server_context(admin.tls) if admin.tls is not None else None
        try:
            if admin.mysql is not None:
                from .sql import SqlAdmin  # mysql-mimic and sqlglot load only when used

                sql = SqlAdmin(self.tier, self.tls)
                await sql.start(admin.mysql)
                self.sql = sql
            if admin.http is not None:
                from .http import HttpAdmin

                http = HttpAdmin(self.tier, self.tls)
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

    def reload_certificates(self) -> None:
        """Read admin.tls's files again (SIGHUP / RELOAD): new connections get them."""
        tls = self.tier.config.admin.tls
        if self.tls is None or tls is None:
            return
        try:
            self.tls.load_cert_chain(tls.cert, tls.key)
            if tls.ca:
                self.tls.load_verify_locations(tls.ca)
        except (OSError, ssl.SSLError) as exc:
            log.error("admin.tls: could not re-read %s: %s; keeping the loaded ones", tls.cert, exc)

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


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _address(sockets: Iterable[Any]) -> str:
    for sock in sockets:
        name = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            return f"unix:{name}"
        if sock.family == socket.AF_INET6:
            return f"[{name[0]}]:{name[1]}"
        return f"{name[0]}:{name[1]}"
    return ""
