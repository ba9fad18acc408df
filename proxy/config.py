"""Configuration: YAML in, frozen and fully validated dataclasses out.

A proxy that starts with a typo in its config fails later, under load, in a confusing way. So
every key is checked once, at start (and on SIGHUP reload): unknown keys, wrong types and bad
values are refused with the key's path and what was expected, e.g.
``pool.max_connections: expected a positive integer, got 'lots'``. Validation is hand-written
over the plain dicts that ``yaml.safe_load`` gives, which keeps messages precise and adds no
dependency. The rest of the proxy only ever sees the dataclasses below, never raw dicts.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

__all__ = [
    "Address",
    "AdminConfig",
    "Config",
    "ConfigError",
    "Credentials",
    "LimitsConfig",
    "LogConfig",
    "PoolConfig",
    "ServerConfig",
    "UpstreamConfig",
    "UserConfig",
    "config_to_dict",
    "load_config",
    "native_password_hash",
    "parse_address",
    "parse_config",
    "parse_duration",
    "parse_size",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

REDACTED = "***"
MAX_USER_NAME = 80  # MariaDB's limit for mysql.user.User
DEFAULT_SOURCE = "<config>"  # parse_config's source when the data did not come from a file


class ConfigError(ValueError):
    """A config value was refused: ``str(e)`` is ``"[FILE: ]<path>: <what was expected>"``.

    The key path (``upstream.servers[0].address``) is what an operator needs to find the
    mistake, so it is always there; ``source`` is the file name when there is one.
    """

    def __init__(self, path: str, problem: str, source: str | None = None) -> None:
        # All three go to ValueError so the exception pickles and unpickles intact.
        super().__init__(path, problem, source)
        self.path = path
        self.problem = problem
        self.source = source

    def __str__(self) -> str:
        return ": ".join(part for part in (self.source, self.path, self.problem) if part)


# --- value parsers (public: the CLI and tests use them on their own) -----------------------------

_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmg])(?:i?b)?|b)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"k": KiB, "m": MiB, "g": GiB, "": 1}


def parse_duration(value: object, path: str) -> float:
    """Seconds from ``"5s"``, ``"250ms"``, ``"1.5s"``, ``"2m"``, ``"1h"`` or a plain number.

    A bare number (or numeric string) means seconds. Negative, infinite and NaN values are
    refused: no timeout in sluice can sensibly be any of those.
    """
    expected = "expected a duration like 5s, 250ms, 1.5s, 2m, 1h or a number of seconds"
    if isinstance(value, bool):
        raise ConfigError(path, f"{expected}, got {_describe(value)}")
    if isinstance(value, int | float):
        seconds = _as_float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.fullmatch(value)):
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    else:
        raise ConfigError(path, f"{expected}, got {_describe(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(path, f"expected a duration >= 0, got {_describe(value)}")
    return seconds


def _as_float(value: float) -> float:
    """float(), with ints too big for a float read as infinity (then refused) not OverflowError."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def parse_size(value: object, path: str) -> int:
    """Bytes from ``"64MiB"``, ``"16M"``, ``"1GiB"``, ``"512KiB"``, ``"1024"`` or an int.

    K, M and G are always binary (KiB, MiB, GiB), as in MySQL's own ``max_allowed_packet=16M``;
    ``KB``/``MB``/``GB`` and any letter case are read the same way.
    """
    expected = "expected a size like 64MiB, 16M, 512KiB or a number of bytes"
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE_RE.fullmatch(value)):
        number, unit = match[1], _SIZE_UNITS[(match[2] or "").lower()]
        if "." not in number:
            size = int(number) * unit
        elif (scaled := float(number) * unit).is_integer():
            size = int(scaled)
        else:
            raise ConfigError(path, f"expected a whole number of bytes, got {_describe(value)}")
    else:
        raise ConfigError(path, f"{expected}, got {_describe(value)}")
    if size < 0:
        raise ConfigError(path, f"expected a size >= 0, got {_describe(value)}")
    return size


@dataclass(frozen=True, slots=True)
class Address:
    """Where to listen or connect: TCP ``host:port`` or a unix socket path."""

    kind: Literal["tcp", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: object, path: str, *, allow_zero_port: bool = False) -> Address:
        """Same as :func:`parse_address`."""
        return parse_address(text, path, allow_zero_port=allow_zero_port)


_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")


def parse_address(text: object, path: str, *, allow_zero_port: bool = False) -> Address:
    """Read ``"127.0.0.1:6033"``, ``"localhost:3306"``, ``"[::1]:6033"`` or ``"unix:/run/x.sock"``.

    Port 0 ("any free port") is refused unless ``allow_zero_port``: it only makes sense for a
    listening socket in tests, never for an upstream. ``str()`` of the result gives back the
    canonical text (IPv6 compressed), so equal addresses compare equal.
    """
    expected = "expected an address like 127.0.0.1:6033, [::1]:6033 or unix:/path/to.sock"
    if not isinstance(text, str):
        raise ConfigError(path, f"{expected}, got {_describe(text)}")
    if text.startswith("unix:"):
        sock = text[len("unix:") :]
        if not sock or "\0" in sock:
            raise ConfigError(path, f"expected a socket path after 'unix:', got {text!r}")
        return Address("unix", path=sock)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(path, f"{expected}, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            host = ipaddress.IPv6Address(host[1:-1]).compressed
        except ValueError:
            raise ConfigError(path, f"expected an IPv6 address inside [ ], got {text!r}") from None
    elif ":" in host:
        raise ConfigError(
            path, f"expected an IPv6 address in brackets like [::1]:6033, got {text!r}"
        )
    elif host.replace(".", "").isdigit():
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ConfigError(path, f"expected a valid IPv4 address, got {text!r}") from None
    elif not _HOSTNAME_RE.fullmatch(host):
        raise ConfigError(path, f"expected a host name or IP address, got {text!r}")
    lowest = 0 if allow_zero_port else 1
    if not (port_text.isascii() and port_text.isdigit()) or not lowest <= int(port_text) <= 65535:
        raise ConfigError(path, f"expected a port {lowest}..65535 after the host, got {text!r}")
    return Address("tcp", host=host, port=int(port_text))


def native_password_hash(password: str) -> bytes:
    """SHA1(SHA1(password)): what mysql_native_password verifies against, as mysql.user keeps it."""
    return hashlib.sha1(hashlib.sha1(password.encode()).digest()).digest()


# --- the configuration objects ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserConfig:
    """A client account: the proxy verifies mysql_native_password logins from the hash alone."""

    name: str
    password_hash: bytes = field(repr=False)  # 20-byte SHA1(SHA1(password))
    password: str | None = field(default=None, repr=False)  # plaintext, when the config gave it
    max_connections: int | None = None  # this user's share of each server's pool (None: all)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One upstream: a database server (remote tier) or a remote tier (local tier)."""

    name: str
    address: Address


@dataclass(frozen=True, slots=True)
class Credentials:
    """A login sluice itself uses upstream (monitoring, replication)."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClientTLSConfig:
    """TLS for the clients of this tier's TCP listeners (unix sockets count as secure)."""

    cert: str
    key: str
    ca: str | None = None  # request client certificates and verify those presented
    client_cert: Literal["optional", "required"] = "optional"
    mode: Literal["disabled", "preferred", "required"] = "preferred"
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"


@dataclass(frozen=True, slots=True)
class UpstreamTLSConfig:
    """TLS from this tier to its upstream servers."""

    mode: Literal["disabled", "preferred", "required", "verify_ca", "verify_identity"] = "preferred"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"


@dataclass(frozen=True, slots=True)
class FailureDelayConfig:
    """Failed logins from one source address wait longer and longer (MySQL's
    connection_control): from the `after`-th failure on, up to `max`; a success resets it."""

    after: int = 3
    max: float = 2.0


@dataclass(frozen=True, slots=True)
class AuthConfig:
    default_plugin: Literal["mysql_native_password", "caching_sha2_password"] = (
        "mysql_native_password"
    )
    rsa_key: str | None = None  # caching_sha2 full authentication without TLS (else generated)
    failure_delay: FailureDelayConfig = FailureDelayConfig()


@dataclass(frozen=True, slots=True)
class KeepaliveConfig:
    """TCP keepalive (and, upstream, TCP_USER_TIMEOUT): a peer that vanished without a reset
    is noticed within idle + interval x count seconds, not Linux's ~15 minutes."""

    idle: float = 10.0
    interval: float = 2.0
    count: int = 3
    user_timeout: float | None = None  # unacknowledged data; None: idle + interval x count

    @property
    def bound(self) -> float:
        """TCP_USER_TIMEOUT: how long sent data may stay unacknowledged."""
        if self.user_timeout is not None:
            return self.user_timeout
        return self.idle + self.interval * self.count


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """The health probe of every upstream server: a server that does not answer `failures`
    probes in a row, each within `timeout`, is down."""

    interval: float = 0.5
    timeout: float = 1.0
    failures: int = 3


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """Where this tier's pool connects, and the accounts a remote tier needs to manage them."""

    servers: tuple[ServerConfig, ...]
    monitor: Credentials | None = None
    replication: Credentials | None = None
    connect_timeout: float = 5.0
    keepalive: KeepaliveConfig = KeepaliveConfig()
    health: HealthConfig = HealthConfig()
    tls: UpstreamTLSConfig = UpstreamTLSConfig(mode="disabled")


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """The upstream pool. ``max_connections`` is the hard cap that is never exceeded.

    ``idle_timeout`` and ``max_lifetime`` may be 0, which is meant as "never".
    """

    max_connections: int = 24
    acquire_timeout: float = 5.0
    idle_timeout: float = 300.0
    max_lifetime: float = 3600.0
    min_idle: int = 0
    connect_rate: float = 100.0  # new upstream connections per second: tames connection storms
    idle_transaction_timeout: float = 0.0  # a transaction idle this long is rolled back (0: off)
    max_transaction_time: float = 0.0  # a transaction open this long is ended (0: off)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """Admin SQL port and HTTP endpoints; each is off unless given an address."""

    mysql: Address | None = None
    http: Address | None = None
    user: str = "admin"
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)  # POST controls are refused without it
    tls: ClientTLSConfig | None = None  # both endpoints; its ca verifies peers too


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Client-side limits that keep one misbehaving app host from taking the proxy down."""

    max_clients: int = 10000
    handshake_timeout: float = 10.0
    max_packet_size: int = 64 * MiB
    keepalive: KeepaliveConfig = KeepaliveConfig(idle=60.0, interval=10.0, count=3)


@dataclass(frozen=True, slots=True)
class PauseConfig:
    """The write pause (PAUSE, switchover): how long it may last and what it may hold."""

    drain_timeout: float = 5.0  # open transactions may finish this long; then they are killed
    max_pause: float = 30.0  # a pause longer than this ends by itself, with a warning
    max_queued: int = 10000  # statements waiting for RESUME; more get an error at once


@dataclass(frozen=True, slots=True)
class FailoverConfig:
    """What a remote tier does while it has no writer (the primary died or went read-only)."""

    mode: Literal["off", "buffer", "auto"] = "off"  # default: buffer when a monitor is set
    buffer_window: float = 10.0  # the longest a command waits for a writer; then an error
    max_buffered: int = 10000  # commands waiting at once; more get an error at once
    min_interval: float = 60.0  # mode auto: no second automatic failover sooner than this


@dataclass(frozen=True, slots=True)
class SwitchoverConfig:
    """Planned switchover: its bounds, and the other remote tiers that switch together."""

    peers: tuple[Address, ...] = ()  # admin.http of the other remote tiers of this cluster
    max_lag: float = 10.0  # preflight: the candidate may be at most this far behind
    catch_up_timeout: float = 30.0  # before pausing: the candidate must reach the primary
    promote_timeout: float = 5.0  # while paused: the candidate must apply the last writes
    lock_wait_timeout: float = 2.0  # read_only on the old primary waits this long for writes
    peer_timeout: float = 10.0  # one HTTP call to a peer (a pause drains within it)


@dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    """The heartbeat probe: a row written through this tier every `interval` (the customer's
    path), and its age read on every server with the monitor account (replication lag)."""

    user: str
    password: str = field(repr=False)
    interval: float = 1.0
    table: str = "sluice.heartbeat"
    id: str = ""  # the row this tier writes; default: host name and first listen address


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """The fleet's consensus store: membership and the lock on changes of writer (etcd v3)."""

    etcd: tuple[Address, ...]
    cluster: str = "main"  # keys live under /sluice/<cluster>/
    name: str = ""  # this tier's member name; default: host name + first listen address
    lease_ttl: float = 5.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Logging level and output format."""

    level: str = "info"  # debug | info | warning | error
    format: str = "plain"  # plain | json


@dataclass(frozen=True, slots=True)
class Config:
    """One tier's whole configuration, as validated by :func:`parse_config`."""

    tier: Literal["remote", "local"]
    listen: tuple[Address, ...]
    admin: AdminConfig
    users: tuple[UserConfig, ...]
    upstream: UpstreamConfig
    pool: PoolConfig = PoolConfig()
    limits: LimitsConfig = LimitsConfig()
    log: LogConfig = LogConfig()
    pause: PauseConfig = PauseConfig()
    switchover: SwitchoverConfig = SwitchoverConfig()
    heartbeat: HeartbeatConfig | None = None
    fleet: FleetConfig | None = None
    failover: FailoverConfig = FailoverConfig()
    tls: ClientTLSConfig | None = None
    auth: AuthConfig = AuthConfig()

    def user(self, name: str) -> UserConfig | None:
        """The client account called ``name`` (case-sensitive, as in MySQL), if any."""
        return next((u for u in self.users if u.name == name), None)

    def server(self, name: str) -> ServerConfig | None:
        """The upstream server called ``name``, if any."""
        return next((s for s in self.upstream.servers if s.name == name), None)


# --- validation helpers --------------------------------------------------------------------------


def _describe(value: object, *, secret: bool = False) -> str:
    """How a found value is shown in an error: YAML spelling, and secrets never echoed."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if secret:
        kind = {str: "a string", int: "an integer", float: "a number"}.get(type(value), "a value")
        return f"{kind} (not shown)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _section(
    value: object, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
) -> dict[str, object]:
    """Check a mapping's keys: unknown keys first (a typo is more likely than an omission)."""
    names = ", ".join(sorted(allowed))
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected a mapping with keys {names}, got {_describe(value)}")
    for key in value:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(_at(path, str(key)), f"unknown key; expected one of: {names}{hint}")
    for key in required:
        if key not in value:
            raise ConfigError(_at(path, key), "missing required key")
    return value


def _string(value: object, path: str, *, secret: bool = False, empty: bool = False) -> str:
    if not isinstance(value, str):
        quote = " (quote it in YAML)" if isinstance(value, int | float) else ""
        what = "a string" if empty else "a non-empty string"
        raise ConfigError(path, f"expected {what}{quote}, got {_describe(value, secret=secret)}")
    if not value and not empty:
        raise ConfigError(path, "expected a non-empty string, got ''")
    return value


def _integer(value: object, path: str, *, minimum: int) -> int:
    """An int and not a bool: YAML's ``true`` is a Python int, but never a sensible count."""
    expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"expected {expected}, got {_describe(value)}")
    if value < minimum:
        raise ConfigError(path, f"expected {expected}, got {value}")
    return value


def _timeout(value: object, path: str, *, positive: bool) -> float:
    """A duration; ``positive`` where 0 would make every attempt fail at once."""
    seconds = parse_duration(value, path)
    if positive and seconds == 0:
        raise ConfigError(path, f"expected a duration > 0, got {_describe(value)}")
    return seconds


def _choice(value: object, path: str, choices: tuple[str, ...]) -> str:
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    names = ", ".join(repr(c) for c in choices)
    raise ConfigError(path, f"expected one of {names}, got {_describe(value)}")


def _list(value: object, path: str, what: str) -> list[object]:
    if not isinstance(value, list) or not value:
        raise ConfigError(path, f"expected a non-empty list of {what}, got {_describe(value)}")
    return value


# --- sections ------------------------------------------------------------------------------------

_HASH_RE = re.compile(r"\*[0-9A-Fa-f]{40}")
_SERVER_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def _any_port(address: Address) -> bool:
    """Port 0: each bind gets its own free port, so two of these never clash."""
    return address.kind == "tcp" and address.port == 0


def _parse_listen(value: object, allow_zero_port: bool) -> tuple[Address, ...]:
    if isinstance(value, str):
        return (parse_address(value, "listen", allow_zero_port=allow_zero_port),)
    if not isinstance(value, list):
        raise ConfigError(
            "listen",
            "expected an address like 127.0.0.1:6033 or unix:/path/to.sock, or a list of them,"
            f" got {_describe(value)}",
        )
    items = _list(value, "listen", "addresses like 127.0.0.1:6033 or unix:/path/to.sock")
    found: dict[Address, str] = {}
    addresses = []
    for i, item in enumerate(items):
        path = f"listen[{i}]"
        address = parse_address(item, path, allow_zero_port=allow_zero_port)
        if address in found and not _any_port(address):
            raise ConfigError(path, f"duplicate address '{address}' (already at {found[address]})")
        found.setdefault(address, path)
        addresses.append(address)
    return tuple(addresses)


def _parse_user(value: object, path: str) -> UserConfig:
    section = _section(
        value, path, ("max_connections", "name", "password", "password_hash"), required=("name",)
    )
    name = _string(section["name"], _at(path, "name"))
    if len(name) > MAX_USER_NAME:
        raise ConfigError(
            _at(path, "name"),
            f"expected a user name of at most {MAX_USER_NAME} characters, got {len(name)}",
        )
    if ("password" in section) == ("password_hash" in section):
        found = "both" if "password" in section else "neither"
        raise ConfigError(path, f"expected exactly one of password, password_hash; got {found}")
    share = None
    if "max_connections" in section:
        share = _integer(section["max_connections"], _at(path, "max_connections"), minimum=1)
    if "password" in section:
        password = _string(section["password"], _at(path, "password"), secret=True)
        return UserConfig(name, native_password_hash(password), password, share)
    hash_path = _at(path, "password_hash")
    text = _string(section["password_hash"], hash_path, secret=True)
    if not _HASH_RE.fullmatch(text):
        raise ConfigError(
            hash_path, "expected '*' followed by 40 hex digits (as mysql.user stores it)"
        )
    return UserConfig(name, bytes.fromhex(text[1:]), max_connections=share)


def _parse_users(value: object) -> tuple[UserConfig, ...]:
    items = _list(value, "users", "users like {name: app, password_hash: '*…'}")
    users: dict[str, tuple[UserConfig, str]] = {}
    for i, item in enumerate(items):
        path = f"users[{i}]"
        user = _parse_user(item, path)
        if user.name in users:
            raise ConfigError(
                _at(path, "name"),
                f"duplicate user {user.name!r} (already at {users[user.name][1]})",
            )
        users[user.name] = (user, path)
    return tuple(user for user, _ in users.values())


def _parse_server(value: object, path: str) -> ServerConfig:
    section = _section(value, path, ("address", "name"), required=("name", "address"))
    name = _string(section["name"], _at(path, "name"))
    if not _SERVER_NAME_RE.fullmatch(name):
        # Names travel in SQL ('SWITCHOVER TO db2'), URLs (?to=db2) and metric labels.
        raise ConfigError(
            _at(path, "name"),
            f"expected a name of letters, digits, '_', '-', '.' (at most 64), got {name!r}",
        )
    return ServerConfig(name, parse_address(section["address"], _at(path, "address")))


def _parse_servers(value: object, path: str) -> tuple[ServerConfig, ...]:
    items = _list(value, path, "servers like {name: db1, address: '127.0.0.1:3306'}")
    names: dict[str, str] = {}
    addresses: dict[Address, str] = {}
    servers = []
    for i, item in enumerate(items):
        item_path = f"{path}[{i}]"
        server = _parse_server(item, item_path)
        if server.name in names:
            raise ConfigError(
                _at(item_path, "name"),
                f"duplicate server name {server.name!r} (already at {names[server.name]})",
            )
        if server.address in addresses:
            raise ConfigError(
                _at(item_path, "address"),
                f"duplicate address '{server.address}' (already at {addresses[server.address]})",
            )
        names[server.name] = item_path
        addresses[server.address] = item_path
        servers.append(server)
    return tuple(servers)


def _parse_credentials(value: object, path: str) -> Credentials:
    section = _section(value, path, ("password", "user"), required=("user", "password"))
    return Credentials(
        user=_string(section["user"], _at(path, "user")),
        # An upstream account may legitimately have no password (e.g. a sandbox).
        password=_string(section["password"], _at(path, "password"), secret=True, empty=True),
    )


def _parse_keepalive(value: object, path: str, defaults: KeepaliveConfig) -> KeepaliveConfig:
    allowed = ("count", "idle", "interval", "user_timeout")
    section = _section(value, path, allowed)
    user_timeout = None
    if "user_timeout" in section:
        user_timeout = _timeout(section["user_timeout"], f"{path}.user_timeout", positive=True)
    return KeepaliveConfig(
        idle=_timeout(section.get("idle", defaults.idle), f"{path}.idle", positive=True),
        interval=_timeout(
            section.get("interval", defaults.interval), f"{path}.interval", positive=True
        ),
        count=_integer(section.get("count", defaults.count), f"{path}.count", minimum=1),
        user_timeout=user_timeout,
    )


def _parse_health(value: object) -> HealthConfig:
    section = _section(value, "upstream.health", ("failures", "interval", "timeout"))
    d = HealthConfig()
    return HealthConfig(
        interval=_timeout(
            section.get("interval", d.interval), "upstream.health.interval", positive=True
        ),
        timeout=_timeout(
            section.get("timeout", d.timeout), "upstream.health.timeout", positive=True
        ),
        failures=_integer(
            section.get("failures", d.failures), "upstream.health.failures", minimum=1
        ),
    )


_TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")


def _file(value: object, path: str) -> str:
    """A file sluice reads at start and on reload (where a missing or unreadable one is
    refused with its path and why: a config may be checked on a machine without them)."""
    return _string(value, path)


def _tls_version(section: dict[str, object], path: str) -> str:
    value = section.get("min_version", "TLSv1.2")
    if value not in _TLS_VERSIONS:
        raise ConfigError(
            path, f"expected one of {', '.join(_TLS_VERSIONS)}, got {_describe(value)}"
        )
    return str(value)


def _parse_client_tls(
    value: object, path: str = "tls", default_mode: str = "preferred"
) -> ClientTLSConfig | None:
    if value is None:
        return None
    allowed = ("ca", "cert", "client_cert", "key", "min_version", "mode")
    section = _section(value, path, allowed)
    mode = _choice(
        section.get("mode", default_mode), f"{path}.mode", ("disabled", "preferred", "required")
    )
    if mode == "disabled" and not ({"cert", "key"} & set(section)):
        return None
    for key in ("cert", "key"):
        if key not in section:
            raise ConfigError(
                _at(path, key), f"missing required key (needed for {path}.mode {mode})"
            )
    client_cert = _choice(
        section.get("client_cert", "optional"), f"{path}.client_cert", ("optional", "required")
    )
    ca = _file(section["ca"], f"{path}.ca") if "ca" in section else None
    if client_cert == "required" and ca is None:
        raise ConfigError(f"{path}.client_cert", f"'required' needs {path}.ca to verify them")
    return ClientTLSConfig(
        cert=_file(section["cert"], f"{path}.cert"),
        key=_file(section["key"], f"{path}.key"),
        ca=ca,
        client_cert="required" if client_cert == "required" else "optional",
        mode="disabled"
        if mode == "disabled"
        else "required"
        if mode == "required"
        else "preferred",
        min_version="TLSv1.3"
        if _tls_version(section, f"{path}.min_version") == "TLSv1.3"
        else "TLSv1.2",
    )


_UPSTREAM_TLS_MODES = ("disabled", "preferred", "required", "verify_ca", "verify_identity")


def _parse_upstream_tls(value: object) -> UpstreamTLSConfig:
    path = "upstream.tls"
    section = _section(value, path, ("ca", "cert", "key", "min_version", "mode"))
    mode = _choice(section.get("mode", "preferred"), f"{path}.mode", _UPSTREAM_TLS_MODES)
    if "key" in section and "cert" not in section:
        raise ConfigError(f"{path}.key", f"needs {path}.cert (the client certificate)")
    return UpstreamTLSConfig(
        mode=mode,  # type: ignore[arg-type]
        ca=_file(section["ca"], f"{path}.ca") if "ca" in section else None,
        cert=_file(section["cert"], f"{path}.cert") if "cert" in section else None,
        key=_file(section["key"], f"{path}.key") if "key" in section else None,
        min_version="TLSv1.3"
        if _tls_version(section, f"{path}.min_version") == "TLSv1.3"
        else "TLSv1.2",
    )


def _parse_auth(value: object) -> AuthConfig:
    section = _section(value, "auth", ("default_plugin", "failure_delay", "rsa_key"))
    d = AuthConfig()
    plugin = _choice(
        section.get("default_plugin", d.default_plugin),
        "auth.default_plugin",
        ("mysql_native_password", "caching_sha2_password"),
    )
    delay = _section(section.get("failure_delay", {}), "auth.failure_delay", ("after", "max"))
    rsa_key = None
    if "rsa_key" in section:
        rsa_key = _string(section["rsa_key"], "auth.rsa_key")
    return AuthConfig(
        default_plugin=plugin,  # type: ignore[arg-type]
        rsa_key=rsa_key,
        failure_delay=FailureDelayConfig(
            after=_integer(
                delay.get("after", d.failure_delay.after), "auth.failure_delay.after", minimum=0
            ),
            max=_timeout(
                delay.get("max", d.failure_delay.max), "auth.failure_delay.max", positive=False
            ),
        ),
    )


def _parse_upstream(value: object, from_fleet: bool = False) -> UpstreamConfig:
    """`from_fleet`: a local tier whose remote tiers come from etcd (no servers needed)."""
    allowed = (
        "connect_timeout",
        "health",
        "keepalive",
        "monitor",
        "replication",
        "servers",
        "tls",
    )
    section = _section(value, "upstream", allowed, required=() if from_fleet else ("servers",))
    defaults = UpstreamConfig(servers=())

    def credentials(key: str) -> Credentials | None:
        if key not in section:
            return None
        return _parse_credentials(section[key], f"upstream.{key}")

    return UpstreamConfig(
        servers=_parse_servers(section["servers"], "upstream.servers")
        if "servers" in section or not from_fleet
        else (),
        monitor=credentials("monitor"),
        replication=credentials("replication"),
        connect_timeout=_timeout(
            section.get("connect_timeout", defaults.connect_timeout),
            "upstream.connect_timeout",
            positive=True,
        ),
        keepalive=_parse_keepalive(
            section.get("keepalive", {}), "upstream.keepalive", defaults.keepalive
        ),
        health=_parse_health(section.get("health", {})),
        tls=_parse_upstream_tls(section.get("tls", {"mode": "disabled"})),
    )


def _parse_pool(value: object) -> PoolConfig:
    allowed = (
        "acquire_timeout",
        "connect_rate",
        "idle_timeout",
        "idle_transaction_timeout",
        "max_connections",
        "max_lifetime",
        "max_transaction_time",
        "min_idle",
    )
    section = _section(value, "pool", allowed)
    d = PoolConfig()
    max_connections = _integer(
        section.get("max_connections", d.max_connections), "pool.max_connections", minimum=1
    )
    min_idle = _integer(section.get("min_idle", d.min_idle), "pool.min_idle", minimum=0)
    if min_idle > max_connections:
        raise ConfigError(
            "pool.min_idle",
            f"expected at most pool.max_connections ({max_connections}), got {min_idle}",
        )
    rate = section.get("connect_rate", d.connect_rate)
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int | float)
        or not 0 < _as_float(rate) < math.inf
    ):
        raise ConfigError(
            "pool.connect_rate",
            f"expected a positive number of new connections per second, got {_describe(rate)}",
        )
    return PoolConfig(
        max_connections=max_connections,
        acquire_timeout=_timeout(
            section.get("acquire_timeout", d.acquire_timeout), "pool.acquire_timeout", positive=True
        ),
        idle_timeout=_timeout(
            section.get("idle_timeout", d.idle_timeout), "pool.idle_timeout", positive=False
        ),
        max_lifetime=_timeout(
            section.get("max_lifetime", d.max_lifetime), "pool.max_lifetime", positive=False
        ),
        min_idle=min_idle,
        connect_rate=float(rate),
        idle_transaction_timeout=_timeout(
            section.get("idle_transaction_timeout", d.idle_transaction_timeout),
            "pool.idle_transaction_timeout",
            positive=False,
        ),
        max_transaction_time=_timeout(
            section.get("max_transaction_time", d.max_transaction_time),
            "pool.max_transaction_time",
            positive=False,
        ),
    )


def _parse_admin(value: object, allow_zero_port: bool) -> AdminConfig:
    section = _section(value, "admin", ("http", "mysql", "password", "tls", "token", "user"))
    defaults = AdminConfig()

    def address(key: str) -> Address | None:
        if key not in section:
            return None
        return parse_address(section[key], f"admin.{key}", allow_zero_port=allow_zero_port)

    def secret(key: str) -> str | None:
        return _string(section[key], f"admin.{key}", secret=True) if key in section else None

    admin = AdminConfig(
        mysql=address("mysql"),
        http=address("http"),
        user=_string(section.get("user", defaults.user), "admin.user"),
        password=secret("password"),
        token=secret("token"),
        # An admin endpoint with TLS configured takes TLS only (the token must not travel
        # in clear): mode defaults to required here.
        tls=_parse_client_tls(section.get("tls"), "admin.tls", default_mode="required"),
    )
    if admin.mysql is not None and admin.password is None:
        raise ConfigError("admin.password", "required when admin.mysql is set (admin SQL login)")
    if admin.mysql is not None and admin.mysql == admin.http and not _any_port(admin.mysql):
        raise ConfigError("admin.http", f"address '{admin.http}' is already used by admin.mysql")
    return admin


def _parse_limits(value: object) -> LimitsConfig:
    section = _section(
        value, "limits", ("handshake_timeout", "keepalive", "max_clients", "max_packet_size")
    )
    d = LimitsConfig()
    packet = parse_size(section.get("max_packet_size", d.max_packet_size), "limits.max_packet_size")
    if not KiB <= packet <= GiB:
        raise ConfigError(
            "limits.max_packet_size", f"expected a size from 1KiB to 1GiB, got {packet} bytes"
        )
    return LimitsConfig(
        max_clients=_integer(
            section.get("max_clients", d.max_clients), "limits.max_clients", minimum=1
        ),
        handshake_timeout=_timeout(
            section.get("handshake_timeout", d.handshake_timeout),
            "limits.handshake_timeout",
            positive=True,
        ),
        max_packet_size=packet,
        keepalive=_parse_keepalive(section.get("keepalive", {}), "limits.keepalive", d.keepalive),
    )


def _parse_pause(value: object) -> PauseConfig:
    section = _section(value, "pause", ("drain_timeout", "max_pause", "max_queued"))
    d = PauseConfig()
    return PauseConfig(
        drain_timeout=_timeout(
            section.get("drain_timeout", d.drain_timeout), "pause.drain_timeout", positive=False
        ),
        max_pause=_timeout(section.get("max_pause", d.max_pause), "pause.max_pause", positive=True),
        max_queued=_integer(section.get("max_queued", d.max_queued), "pause.max_queued", minimum=0),
    )


def _parse_failover(
    value: object, tier: str, upstream: UpstreamConfig, with_fleet: bool = False
) -> FailoverConfig:
    section = _section(value, "failover", ("buffer_window", "max_buffered", "min_interval", "mode"))
    d = FailoverConfig()
    default_mode = "buffer" if tier == "remote" and upstream.monitor is not None else "off"
    mode = _choice(section.get("mode", default_mode), "failover.mode", ("off", "buffer", "auto"))
    if mode != "off" and tier != "remote":
        raise ConfigError(
            "failover.mode", "only a remote tier fails over (a local tier follows its remote tiers)"
        )
    if mode != "off" and upstream.monitor is None:
        raise ConfigError(
            "failover.mode",
            f"{mode!r} needs upstream.monitor (the account that finds the new writer)",
        )
    if mode == "auto" and not with_fleet:
        raise ConfigError(
            "failover.mode",
            "'auto' needs fleet.etcd (one tier of the fleet promotes, under the fleet's lock); "
            "without it use 'buffer' with an outside orchestrator (see deploy/hooks)",
        )
    if mode == "auto" and upstream.replication is None:
        raise ConfigError(
            "failover.mode", "'auto' needs upstream.replication (what replicas log in with)"
        )
    return FailoverConfig(
        mode=mode,  # type: ignore[arg-type]
        min_interval=_timeout(
            section.get("min_interval", d.min_interval), "failover.min_interval", positive=False
        ),
        buffer_window=_timeout(
            section.get("buffer_window", d.buffer_window), "failover.buffer_window", positive=True
        ),
        max_buffered=_integer(
            section.get("max_buffered", d.max_buffered), "failover.max_buffered", minimum=0
        ),
    )


def _parse_switchover(value: object) -> SwitchoverConfig:
    keys = (
        "catch_up_timeout",
        "lock_wait_timeout",
        "max_lag",
        "peer_timeout",
        "peers",
        "promote_timeout",
    )
    section = _section(value, "switchover", keys)
    d = SwitchoverConfig()
    listed = section.get("peers", [])
    if listed != []:
        listed = _list(listed, "switchover.peers", "admin.http addresses of the other remote tiers")
    peers = tuple(parse_address(item, f"switchover.peers[{i}]") for i, item in enumerate(listed))

    def seconds(key: str, *, positive: bool = True) -> float:
        return _timeout(section.get(key, getattr(d, key)), f"switchover.{key}", positive=positive)

    return SwitchoverConfig(
        peers=peers,
        max_lag=seconds("max_lag", positive=False),
        catch_up_timeout=seconds("catch_up_timeout"),
        promote_timeout=seconds("promote_timeout"),
        lock_wait_timeout=seconds("lock_wait_timeout"),
        peer_timeout=seconds("peer_timeout"),
    )


_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*")


def _parse_heartbeat(value: object) -> HeartbeatConfig | None:
    if value is None:
        return None
    section = _section(
        value, "heartbeat", ("id", "interval", "password", "table", "user"), required=("user",)
    )
    table = _string(section.get("table", "sluice.heartbeat"), "heartbeat.table")
    if not _TABLE_RE.fullmatch(table):
        raise ConfigError("heartbeat.table", f"expected schema.table, got {table!r}")
    return HeartbeatConfig(
        user=_string(section["user"], "heartbeat.user"),
        password=_string(
            section.get("password", ""), "heartbeat.password", secret=True, empty=True
        ),
        interval=_timeout(section.get("interval", 1.0), "heartbeat.interval", positive=True),
        table=table,
        id=_string(section.get("id", ""), "heartbeat.id", empty=True),
    )


_CLUSTER_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _parse_fleet(value: object) -> FleetConfig | None:
    if value is None:
        return None
    section = _section(value, "fleet", ("cluster", "etcd", "lease_ttl", "name"), ("etcd",))
    endpoints = []
    for i, item in enumerate(_list(section["etcd"], "fleet.etcd", "etcd endpoints")):
        address = parse_address(item, f"fleet.etcd[{i}]")
        if address.kind != "tcp":
            raise ConfigError(f"fleet.etcd[{i}]", f"expected host:port, got {item!r}")
        endpoints.append(address)
    names = {}
    for key in ("cluster", "name"):
        if key in section:
            text = _string(section[key], f"fleet.{key}")
            if not _CLUSTER_RE.fullmatch(text):
                raise ConfigError(
                    f"fleet.{key}", f"expected letters, digits, '_', '.' or '-', got {text!r}"
                )
            names[key] = text
    ttl = _timeout(section.get("lease_ttl", 5.0), "fleet.lease_ttl", positive=True)
    if ttl < 2:
        raise ConfigError(
            "fleet.lease_ttl",
            f"expected at least 2s (etcd leases count whole seconds), got {ttl:g}s",
        )
    return FleetConfig(etcd=tuple(endpoints), lease_ttl=ttl, **names)


def _parse_log(value: object) -> LogConfig:
    section = _section(value, "log", ("format", "level"))
    d = LogConfig()
    return LogConfig(
        level=_choice(
            section.get("level", d.level), "log.level", ("debug", "info", "warning", "error")
        ),
        format=_choice(section.get("format", d.format), "log.format", ("plain", "json")),
    )


_TOP_LEVEL = (
    "admin",
    "auth",
    "failover",
    "fleet",
    "heartbeat",
    "limits",
    "listen",
    "log",
    "pause",
    "pool",
    "switchover",
    "tier",
    "tls",
    "upstream",
    "users",
)


def parse_config(
    data: object, source: str = DEFAULT_SOURCE, *, allow_zero_port: bool = False
) -> Config:
    """Validate the YAML-shaped ``data`` into a :class:`Config` or raise :class:`ConfigError`.

    ``source`` (a file name) prefixes error messages; the default means "not from a file" and
    adds no prefix. ``allow_zero_port`` lets ``listen`` and ``admin`` addresses use port 0 so
    tests can bind a free port; upstream addresses never may.
    """
    try:
        return _parse_config(data, allow_zero_port)
    except ConfigError as error:
        if source == DEFAULT_SOURCE or error.source is not None:
            raise
        raise ConfigError(error.path, error.problem, source) from None


SECRET_KEYS = ("password", "password_hash", "token")
"""Keys whose value may instead be read from a file: `password_file: /run/secrets/app`
(how Kubernetes and Docker hand out secrets: mounted files, re-read on every reload)."""


def _secret_files(data: object, path: str = "") -> object:
    """`data` with every `<secret>_file: PATH` replaced by `<secret>: <the file's text>`
    (one trailing newline dropped: `echo pw > file` writes one)."""
    if isinstance(data, list):
        return [_secret_files(item, f"{path}[{i}]") for i, item in enumerate(data)]
    if not isinstance(data, dict):
        return data
    out: dict[object, object] = {}
    for key, value in data.items():
        stem = key[: -len("_file")] if isinstance(key, str) and key.endswith("_file") else None
        if stem not in SECRET_KEYS:
            out[key] = _secret_files(value, _at(path, str(key)))
            continue
        where = _at(path, str(key))
        if stem in data:
            raise ConfigError(where, f"give {stem} or {key}, not both")
        name = _string(value, where)
        try:
            text = Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise ConfigError(where, f"cannot read {name}: {reason}") from None
        out[stem] = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
    return out


def _parse_config(data: object, allow_zero_port: bool) -> Config:
    if not isinstance(data, dict):
        found = "an empty document" if data is None else _describe(data)
        raise ConfigError("(top level)", f"expected a mapping of config sections, got {found}")
    data = _secret_files(data)
    assert isinstance(data, dict)
    section = _section(data, "", _TOP_LEVEL, required=("tier", "listen", "users"))
    tier = _choice(section["tier"], "tier", ("remote", "local"))
    fleet = _parse_fleet(section.get("fleet"))
    from_fleet = tier == "local" and fleet is not None
    if "upstream" not in section and not from_fleet:
        raise ConfigError("upstream", "missing required key")
    listen = _parse_listen(section["listen"], allow_zero_port)
    admin = _parse_admin(section.get("admin", {}), allow_zero_port)
    for key, address in (("mysql", admin.mysql), ("http", admin.http)):
        if address is not None and address in listen and not _any_port(address):
            raise ConfigError(f"admin.{key}", f"address '{address}' is already used by listen")
    upstream = _parse_upstream(section.get("upstream", {}), from_fleet)
    return Config(
        tier="remote" if tier == "remote" else "local",
        listen=listen,
        admin=admin,
        users=_parse_users(section["users"]),
        upstream=upstream,
        pool=_parse_pool(section.get("pool", {})),
        limits=_parse_limits(section.get("limits", {})),
        log=_parse_log(section.get("log", {})),
        pause=_parse_pause(section.get("pause", {})),
        switchover=_parse_switchover(section.get("switchover", {})),
        heartbeat=_parse_heartbeat(section.get("heartbeat")),
        fleet=fleet,
        failover=_parse_failover(section.get("failover", {}), tier, upstream, fleet is not None),
        tls=_parse_client_tls(section.get("tls")),
        auth=_parse_auth(section.get("auth", {})),
    )


# --- files ---------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load``, except a key repeated in one mapping is an error.

    Plain safe_load keeps the last value silently, so a second ``pool:`` section would quietly
    replace the first; that is exactly the kind of mistake strict validation is for.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first: dict[object, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.setdefault(key, key_node)
                except TypeError:  # unhashable key: the base class reports it
                    continue
                if seen is not key_node:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r} (first at line {seen.start_mark.line + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, *, allow_zero_port: bool = False) -> Config:
    """Read and validate a YAML config file; every failure is a :class:`ConfigError`.

    Errors carry the file name; YAML syntax errors also carry the line and column.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", "no such file", source) from None
    except UnicodeDecodeError as error:
        raise ConfigError("", f"not UTF-8 text (byte {error.start})", source) from None
    except OSError as error:
        raise ConfigError("", f"cannot read: {error.strerror or error}", source) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: as safe as safe_load
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = error.problem or error.context or "syntax error"
        context = f" ({error.context})" if error.context and error.problem else ""
        raise ConfigError(where, f"invalid YAML: {problem}{context}", source) from None
    except yaml.YAMLError as error:
        raise ConfigError("", f"invalid YAML: {error}", source) from None
    return parse_config(data, source, allow_zero_port=allow_zero_port)


# --- back to dicts -------------------------------------------------------------------------------


def config_to_dict(cfg: Config, redact: bool = True) -> dict[str, object]:
    """The config in its YAML shape, for SHOW CONFIG and /status.

    With ``redact`` every secret (passwords, password hashes, the token) reads ``"***"``. With
    ``redact=False`` the result parses back to an equal Config. Unset optional keys are left out
    rather than written as null, which parse_config refuses.
    """

    def secret(value: str) -> str:
        return REDACTED if redact else value

    def credentials(creds: Credentials) -> dict[str, object]:
        return {"user": creds.user, "password": secret(creds.password)}

    def tls_dict(t: ClientTLSConfig) -> dict[str, object]:
        return {
            "cert": t.cert,
            "key": t.key,
            **({"ca": t.ca} if t.ca else {}),
            "client_cert": t.client_cert,
            "mode": t.mode,
            "min_version": t.min_version,
        }

    def keepalive(k: KeepaliveConfig) -> dict[str, object]:
        out: dict[str, object] = {"idle": k.idle, "interval": k.interval, "count": k.count}
        if k.user_timeout is not None:
            out["user_timeout"] = k.user_timeout
        return out

    admin: dict[str, object] = {}
    if cfg.admin.mysql is not None:
        admin["mysql"] = str(cfg.admin.mysql)
    if cfg.admin.http is not None:
        admin["http"] = str(cfg.admin.http)
    admin["user"] = cfg.admin.user
    if cfg.admin.password is not None:
        admin["password"] = secret(cfg.admin.password)
    if cfg.admin.token is not None:
        admin["token"] = secret(cfg.admin.token)
    if cfg.admin.tls is not None:
        admin["tls"] = tls_dict(cfg.admin.tls)

    users: list[dict[str, object]] = []
    for user in cfg.users:
        if user.password is not None:
            entry: dict[str, object] = {"name": user.name, "password": secret(user.password)}
        else:
            text = "*" + user.password_hash.hex().upper()
            entry = {"name": user.name, "password_hash": secret(text)}
        if user.max_connections is not None:
            entry["max_connections"] = user.max_connections
        users.append(entry)

    upstream: dict[str, object] = {
        "servers": [{"name": s.name, "address": str(s.address)} for s in cfg.upstream.servers],
    }
    if cfg.upstream.monitor is not None:
        upstream["monitor"] = credentials(cfg.upstream.monitor)
    if cfg.upstream.replication is not None:
        upstream["replication"] = credentials(cfg.upstream.replication)
    upstream["connect_timeout"] = cfg.upstream.connect_timeout
    up_tls = cfg.upstream.tls
    upstream["tls"] = {
        "mode": up_tls.mode,
        **{k: v for k, v in (("ca", up_tls.ca), ("cert", up_tls.cert), ("key", up_tls.key)) if v},
        "min_version": up_tls.min_version,
    }
    upstream["keepalive"] = keepalive(cfg.upstream.keepalive)
    upstream["health"] = {
        "interval": cfg.upstream.health.interval,
        "timeout": cfg.upstream.health.timeout,
        "failures": cfg.upstream.health.failures,
    }

    pool, limits, log = cfg.pool, cfg.limits, cfg.log
    return {
        "tier": cfg.tier,
        "listen": [str(address) for address in cfg.listen],
        "admin": admin,
        "users": users,
        "upstream": upstream,
        "pool": {
            "max_connections": pool.max_connections,
            "acquire_timeout": pool.acquire_timeout,
            "idle_timeout": pool.idle_timeout,
            "max_lifetime": pool.max_lifetime,
            "min_idle": pool.min_idle,
            "connect_rate": pool.connect_rate,
            "idle_transaction_timeout": pool.idle_transaction_timeout,
            "max_transaction_time": pool.max_transaction_time,
        },
        "limits": {
            "max_clients": limits.max_clients,
            "handshake_timeout": limits.handshake_timeout,
            "max_packet_size": limits.max_packet_size,
            "keepalive": keepalive(limits.keepalive),
        },
        "log": {"level": log.level, "format": log.format},
        "pause": {
            "drain_timeout": cfg.pause.drain_timeout,
            "max_pause": cfg.pause.max_pause,
            "max_queued": cfg.pause.max_queued,
        },
        **({"tls": tls_dict(cfg.tls)} if cfg.tls is not None else {}),
        "auth": {
            "default_plugin": cfg.auth.default_plugin,
            **({"rsa_key": cfg.auth.rsa_key} if cfg.auth.rsa_key else {}),
            "failure_delay": {
                "after": cfg.auth.failure_delay.after,
                "max": cfg.auth.failure_delay.max,
            },
        },
        "failover": {
            "mode": cfg.failover.mode,
            "buffer_window": cfg.failover.buffer_window,
            "max_buffered": cfg.failover.max_buffered,
            "min_interval": cfg.failover.min_interval,
        },
        "switchover": {
            "peers": [str(address) for address in cfg.switchover.peers],
            "max_lag": cfg.switchover.max_lag,
            "catch_up_timeout": cfg.switchover.catch_up_timeout,
            "promote_timeout": cfg.switchover.promote_timeout,
            "lock_wait_timeout": cfg.switchover.lock_wait_timeout,
            "peer_timeout": cfg.switchover.peer_timeout,
        },
        **(
            {
                "fleet": {
                    "etcd": [str(address) for address in cfg.fleet.etcd],
                    "cluster": cfg.fleet.cluster,
                    "name": cfg.fleet.name,
                    "lease_ttl": cfg.fleet.lease_ttl,
                }
            }
            if cfg.fleet is not None
            else {}
        ),
        **(
            {
                "heartbeat": {
                    "user": cfg.heartbeat.user,
                    "password": secret(cfg.heartbeat.password),
                    "interval": cfg.heartbeat.interval,
                    "table": cfg.heartbeat.table,
                    "id": cfg.heartbeat.id,
                }
            }
            if cfg.heartbeat is not None
            else {}
        ),
    }
