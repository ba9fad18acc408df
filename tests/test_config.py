"""Config loading: the contract's example parses, and every mistake is named by its key path."""

from __future__ import annotations

import copy
import hashlib
import pickle
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import (
    Address,
    AdminConfig,
    Config,
    ConfigError,
    Credentials,
    LimitsConfig,
    LogConfig,
    PoolConfig,
    config_to_dict,
    load_config,
    native_password_hash,
    parse_address,
    parse_config,
    parse_duration,
    parse_size,
)

DESIGN_EXAMPLE = """\
tier: remote                    # or local
listen: ["127.0.0.1:6033", "unix:/run/sluice/mysql.sock"]
admin:
  mysql: "127.0.0.1:6032"       # admin SQL port (mysql-mimic)
  http: "127.0.0.1:9033"        # /metrics, /healthz, /readyz, /status, POST controls
  user: admin
  password: "admin-secret"
  token: "token-secret"         # required for POST controls
users:
  - {name: app, password_hash: "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"}   # or password: "…"
upstream:                       # remote tier: database servers; local tier: remote tiers
  servers:
    - {name: db1, address: "127.0.0.1:3306"}
    - {name: db2, address: "127.0.0.1:3307"}
  monitor: {user: sluice, password: "monitor-secret"}
  replication: {user: repl, password: "repl-secret"}
pool: {max_connections: 24, acquire_timeout: 5s}
"""

SECRETS = ("admin-secret", "token-secret", "monitor-secret", "repl-secret", "app-pass")


def mysql_hash_text(password: str) -> str:
    """What `SELECT PASSWORD('…')` / mysql.user shows, computed independently of proxy.config."""
    return "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()


def minimal() -> dict:
    return {
        "tier": "local",
        "listen": "127.0.0.1:6033",
        "users": [{"name": "app", "password": "app-pass"}],
        "upstream": {"servers": [{"name": "remote1", "address": "10.0.0.5:6033"}]},
    }


def example() -> dict:
    return yaml.safe_load(DESIGN_EXAMPLE)


def refused(data: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


# --- whole configs -------------------------------------------------------------------------------


def test_design_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(DESIGN_EXAMPLE)
    cfg = load_config(path)
    assert cfg.tier == "remote"
    assert cfg.listen == (
        Address("tcp", host="127.0.0.1", port=6033),
        Address("unix", path="/run/sluice/mysql.sock"),
    )
    assert cfg.admin == AdminConfig(
        mysql=Address("tcp", "127.0.0.1", 6032),
        http=Address("tcp", "127.0.0.1", 9033),
        user="admin",
        password="admin-secret",
        token="token-secret",
    )
    app = cfg.user("app")
    assert app is not None and app.password is None
    assert app.password_hash == bytes.fromhex("2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19")
    assert [s.name for s in cfg.upstream.servers] == ["db1", "db2"]
    db2 = cfg.server("db2")
    assert db2 is not None and str(db2.address) == "127.0.0.1:3307"
    assert cfg.upstream.monitor == Credentials("sluice", "monitor-secret")
    assert cfg.upstream.replication == Credentials("repl", "repl-secret")
    assert cfg.pool.max_connections == 24
    assert cfg.pool.acquire_timeout == 5.0


def test_minimal_config_gets_documented_defaults() -> None:
    cfg = parse_config(minimal())
    assert cfg.listen == (Address("tcp", "127.0.0.1", 6033),)  # a single string is one address
    assert cfg.admin == AdminConfig(mysql=None, http=None, user="admin", password=None, token=None)
    assert cfg.upstream.monitor is None and cfg.upstream.replication is None
    assert cfg.upstream.connect_timeout == 5.0
    assert cfg.pool == PoolConfig(
        max_connections=24,
        acquire_timeout=5.0,
        idle_timeout=300.0,
        max_lifetime=3600.0,
        min_idle=0,
        connect_rate=100.0,
    )
    assert cfg.limits == LimitsConfig(
        max_clients=10000, handshake_timeout=10.0, max_packet_size=64 * 1024 * 1024
    )
    assert cfg.log == LogConfig(level="info", format="plain")


def test_every_section_can_be_set() -> None:
    data = minimal()
    data["pool"] = {
        "max_connections": 8,
        "acquire_timeout": "250ms",
        "idle_timeout": 0,
        "max_lifetime": "1h",
        "min_idle": 2,
        "connect_rate": 12.5,
    }
    data["limits"] = {"max_clients": 50, "handshake_timeout": "2s", "max_packet_size": "16M"}
    data["log"] = {"level": "DEBUG", "format": "json"}
    data["upstream"]["connect_timeout"] = 1.5
    cfg = parse_config(data)
    assert cfg.pool == PoolConfig(8, 0.25, 0.0, 3600.0, 2, 12.5)
    assert cfg.limits == LimitsConfig(50, 2.0, 16 * 1024 * 1024)
    assert cfg.log == LogConfig("debug", "json")
    assert cfg.upstream.connect_timeout == 1.5


def test_lookup_of_unknown_user_or_server_gives_none() -> None:
    cfg = parse_config(minimal())
    assert cfg.user("nobody") is None
    assert cfg.user("APP") is None  # MySQL user names are case-sensitive
    assert cfg.server("db9") is None


def test_config_objects_are_frozen() -> None:
    cfg = parse_config(minimal())
    with pytest.raises(AttributeError):
        cfg.tier = "remote"  # type: ignore[misc]
    assert isinstance(hash(cfg), int)


# --- errors name the key path --------------------------------------------------------------------


def _set(data: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _del(data: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    del node[last]


BAD_VALUES = [
    # (key to set, value, path expected in the message, words expected in the message)
    (
        "pool.max_connections",
        "lots",
        "pool.max_connections",
        "expected a positive integer, got 'lots'",
    ),
    ("pool.max_connections", True, "pool.max_connections", "got true"),
    ("pool.max_connections", 0, "pool.max_connections", "positive integer"),
    ("pool.max_connections", 2.5, "pool.max_connections", "positive integer"),
    ("pool.min_idle", -1, "pool.min_idle", ">= 0"),
    ("pool.min_idle", 99, "pool.min_idle", "at most pool.max_connections"),
    ("pool.acquire_timeout", 0, "pool.acquire_timeout", "> 0"),
    ("pool.acquire_timeout", "soon", "pool.acquire_timeout", "expected a duration"),
    ("pool.idle_timeout", -5, "pool.idle_timeout", ">= 0"),
    ("pool.max_lifetime", "1d", "pool.max_lifetime", "expected a duration"),
    ("pool.connect_rate", 0, "pool.connect_rate", "positive number"),
    ("pool.connect_rate", False, "pool.connect_rate", "got false"),
    ("pool.connect_rate", "fast", "pool.connect_rate", "per second"),
    ("pool.connect_rate", 10**400, "pool.connect_rate", "positive number"),
    ("pool.max_conections", 5, "pool.max_conections", "did you mean 'max_connections'"),
    ("pool.idle_transaction_timeout", "5s", None, None),  # fine: control row
    ("pool.idle_transaction_timeout", -1, "pool.idle_transaction_timeout", ">= 0"),
    ("pool.max_transaction_time", "forever", "pool.max_transaction_time", "expected a duration"),
    ("users.0.max_connections", 0, "users[0].max_connections", "positive integer"),
    ("users.0.max_connections", "half", "users[0].max_connections", "positive integer"),
    ("limits.max_clients", "many", "limits.max_clients", "positive integer"),
    ("limits.max_packet_size", "1M", None, None),  # fine: control row
    ("limits.max_packet_size", 512, "limits.max_packet_size", "from 1KiB to 1GiB"),
    ("limits.max_packet_size", "2GiB", "limits.max_packet_size", "from 1KiB to 1GiB"),
    ("limits.max_packet_size", "big", "limits.max_packet_size", "expected a size"),
    ("limits.handshake_timeout", 0, "limits.handshake_timeout", "> 0"),
    ("log.level", "verbose", "log.level", "'debug', 'info', 'warning', 'error'"),
    ("log.format", "xml", "log.format", "'plain', 'json'"),
    ("log", "debug", "log", "expected a mapping"),
    ("tier", "middle", "tier", "'remote', 'local'"),
    ("tiers", "local", "tiers", "unknown key; expected one of: admin, auth, failover"),
    ("listen", [], "listen", "non-empty list"),
    ("listen", 6033, "listen", "expected an address"),
    ("listen", ["127.0.0.1:6033", "127.0.0.1:6033"], "listen[1]", "duplicate address"),
    ("listen", ["127.0.0.1:6033", "localhost"], "listen[1]", "expected an address"),
    ("listen", "127.0.0.1:0", "listen", "port 1..65535"),
    ("listen", "127.0.0.1:70000", "listen", "port 1..65535"),
    (
        "admin",
        {"mysql": "127.0.0.1:6033", "password": "pw"},
        "admin.mysql",
        "already used by listen",
    ),
    (
        "admin",
        {"mysql": "127.0.0.1:6032", "http": "127.0.0.1:6032", "password": "pw"},
        "admin.http",
        "already used by admin.mysql",
    ),
    ("admin.mysql", "127.0.0.1:6032", "admin.password", "required when admin.mysql is set"),
    ("admin.http", "nowhere", "admin.http", "expected an address"),
    ("admin.token", 12345, "admin.token", "quote it in YAML"),
    ("admin.token", "", "admin.token", "non-empty string"),
    ("admin.password", None, "admin.password", "got null"),
    ("admin.pasword", "x", "admin.pasword", "unknown key"),
    ("users", [], "users", "non-empty list"),
    ("users", {"name": "app"}, "users", "non-empty list"),
    ("users.0", "app", "users[0]", "expected a mapping"),
    ("users.0.name", "", "users[0].name", "non-empty string"),
    ("users.0.name", "u" * 81, "users[0].name", "at most 80 characters"),
    ("users.0.password", 1234, "users[0].password", "quote it in YAML"),
    ("users.0.password_hash", mysql_hash_text("x"), "users[0]", "exactly one of password"),
    ("users.0.role", "rw", "users[0].role", "unknown key"),
    ("upstream", [], "upstream", "expected a mapping"),
    ("upstream.servers", [], "upstream.servers", "non-empty list"),
    ("upstream.servers.0.name", "db 1", "upstream.servers[0].name", "letters, digits"),
    ("upstream.servers.0.address", "127.0.0.1:0", "upstream.servers[0].address", "port 1..65535"),
    ("upstream.servers.0.address", "::1:3306", "upstream.servers[0].address", "in brackets"),
    ("upstream.servers.0.address", "[zz::1]:3306", "upstream.servers[0].address", "IPv6"),
    ("upstream.servers.0.address", "999.1.1.1:3306", "upstream.servers[0].address", "IPv4"),
    ("upstream.servers.0.address", "unix:", "upstream.servers[0].address", "socket path"),
    ("upstream.monitor", {"user": "m"}, "upstream.monitor.password", "missing required key"),
    ("upstream.monitor", "sluice", "upstream.monitor", "expected a mapping"),
    (
        "upstream.replication",
        {"user": 7, "password": "p"},
        "upstream.replication.user",
        "string",
    ),
    ("upstream.connect_timeout", "0s", "upstream.connect_timeout", "> 0"),
    ("upstream.conect_timeout", 1, "upstream.conect_timeout", "did you mean 'connect_timeout'"),
    ("switchover.peers", ["127.0.0.1:9033"], None, None),  # fine: control row
    ("switchover.peers", [], None, None),  # fine: no peers
    ("switchover.peers", ["nowhere"], "switchover.peers[0]", "expected an address"),
    ("switchover.peers", "127.0.0.1:9033", "switchover.peers", "non-empty list"),
    ("switchover.max_lag", "soon", "switchover.max_lag", "expected a duration"),
    ("switchover.promote_timeout", 0, "switchover.promote_timeout", "> 0"),
    ("switchover.catchup_timeout", 1, "switchover.catchup_timeout", "did you mean"),
]


@pytest.mark.parametrize(("key", "value", "path", "words"), BAD_VALUES, ids=lambda v: str(v)[:40])
def test_bad_value_is_refused_with_its_key_path(
    key: str, value: object, path: str | None, words: str | None
) -> None:
    data = minimal()
    _set(data, key, value)
    if path is None:
        parse_config(data)
        return
    message = refused(data)
    assert message.startswith(path + ": "), message
    assert words in message


def test_unknown_server_key_lists_the_expected_keys() -> None:
    data = minimal()
    data["upstream"]["servers"] = [{"name": "db1", "adress": "127.0.0.1:3306"}]
    assert refused(data) == (
        "upstream.servers[0].adress: unknown key; expected one of: address, name"
        " (did you mean 'address'?)"
    )


@pytest.mark.parametrize("key", ["tier", "listen", "users", "upstream"])
def test_missing_required_top_level_key_is_named(key: str) -> None:
    data = minimal()
    del data[key]
    assert refused(data) == f"{key}: missing required key"


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("upstream.servers", "upstream.servers"),
        ("upstream.servers.0.address", "upstream.servers[0].address"),
        ("users.0.name", "users[0].name"),
    ],
)
def test_missing_nested_key_is_named(key: str, path: str) -> None:
    data = minimal()
    _del(data, key)
    assert refused(data) == f"{path}: missing required key"


def test_user_without_any_password_is_refused() -> None:
    data = minimal()
    data["users"] = [{"name": "app"}]
    assert "users[0]: expected exactly one of password, password_hash; got neither" in refused(data)


def test_bad_password_hash_points_at_the_second_user() -> None:
    data = minimal()
    data["users"].append(
        {"name": "batch", "password_hash": "2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"}
    )
    assert refused(data) == (
        "users[1].password_hash: expected '*' followed by 40 hex digits (as mysql.user stores it)"
    )


def test_duplicate_names_are_refused_with_both_places() -> None:
    data = minimal()
    data["users"].append({"name": "app", "password": "other"})
    assert refused(data) == "users[1].name: duplicate user 'app' (already at users[0])"

    data = minimal()
    data["upstream"]["servers"].append({"name": "remote1", "address": "10.0.0.6:6033"})
    assert refused(data).startswith("upstream.servers[1].name: duplicate server name 'remote1'")

    data = minimal()
    data["upstream"]["servers"].append({"name": "remote2", "address": "10.0.0.5:6033"})
    assert refused(data).startswith(
        "upstream.servers[1].address: duplicate address '10.0.0.5:6033'"
    )


def test_duplicate_listen_address_is_refused_even_when_spelled_differently() -> None:
    data = minimal()
    data["listen"] = ["[::1]:6033", "[0:0::1]:6033"]
    assert refused(data) == "listen[1]: duplicate address '[::1]:6033' (already at listen[0])"


def test_top_level_must_be_a_mapping() -> None:
    assert "(top level): expected a mapping" in refused(None)
    assert "got a list" in refused([1, 2])


def test_errors_never_echo_secrets() -> None:
    data = minimal()
    data["users"][0]["password"] = 918273645
    message = refused(data)
    assert "918273645" not in message and "an integer (not shown)" in message

    data = minimal()
    data["users"] = [{"name": "app", "password_hash": "*app-pass"}]
    assert "app-pass" not in refused(data)


def test_config_error_pickles_and_exposes_its_parts() -> None:
    error = ConfigError("pool.min_idle", "expected an integer >= 0, got -1", "sluice.yaml")
    assert str(error) == "sluice.yaml: pool.min_idle: expected an integer >= 0, got -1"
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.path, clone.problem, clone.source) == (error.path, error.problem, error.source)
    assert isinstance(error, ValueError)


def test_port_zero_is_allowed_for_listen_and_admin_only_when_asked() -> None:
    data = minimal()
    data["listen"] = ["127.0.0.1:0", "127.0.0.1:0"]
    data["admin"] = {"http": "127.0.0.1:0", "mysql": "127.0.0.1:0", "password": "pw"}
    cfg = parse_config(data, allow_zero_port=True)
    assert cfg.listen[0].port == 0 and cfg.admin.http == Address("tcp", "127.0.0.1", 0)

    data["upstream"]["servers"][0]["address"] = "127.0.0.1:0"
    with pytest.raises(ConfigError, match=r"upstream\.servers\[0\]\.address"):
        parse_config(data, allow_zero_port=True)


# --- passwords -----------------------------------------------------------------------------------


def test_password_and_its_hash_give_the_same_user() -> None:
    by_password = minimal()
    by_hash = minimal()
    by_hash["users"] = [{"name": "app", "password_hash": mysql_hash_text("app-pass")}]
    from_password = parse_config(by_password).users[0]
    from_hash = parse_config(by_hash).users[0]
    assert from_password.password_hash == from_hash.password_hash
    assert len(from_hash.password_hash) == 20
    assert from_password.password == "app-pass" and from_hash.password is None
    assert native_password_hash("app-pass") == from_hash.password_hash


def test_password_hash_hex_is_case_insensitive() -> None:
    upper = mysql_hash_text("app-pass")
    data = minimal()
    data["users"] = [
        {"name": "upper", "password_hash": upper},
        {"name": "lower", "password_hash": upper.lower()},
    ]
    cfg = parse_config(data)
    assert cfg.users[0].password_hash == cfg.users[1].password_hash


def test_design_example_hash_is_a_known_mysql_hash() -> None:
    # The contract's example is MySQL's PASSWORD('password'): we must read it the same way.
    assert mysql_hash_text("password") == "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
    assert parse_config(example()).users[0].password_hash == native_password_hash("password")


def test_repr_does_not_show_secrets() -> None:
    data = example()
    data["users"].append({"name": "batch", "password": "app-pass"})
    text = repr(parse_config(data))
    for secret in SECRETS:
        assert secret not in text
    assert "2470C0C0" not in text.upper()


# --- durations and sizes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5s", 5.0),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("0", 0.0),
        ("7", 7.0),
        (" 3 s ", 3.0),
        (".5s", 0.5),
        (10, 10.0),
        (0.125, 0.125),
        (0, 0.0),
    ],
)
def test_duration_forms(text: object, seconds: float) -> None:
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize(
    "value",
    [
        "",
        "s",
        "5 seconds",
        "5S",
        "-1s",
        "1d",
        "1m30s",
        -1,
        10**400,
        float("inf"),
        float("nan"),
        True,
        None,
        [5],
    ],
)
def test_bad_durations_are_refused(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^pool\.idle_timeout: expected a duration"):
        parse_duration(value, "pool.idle_timeout")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64MiB", 64 << 20),
        ("16M", 16 << 20),
        ("16m", 16 << 20),
        ("1GiB", 1 << 30),
        ("512KiB", 512 << 10),
        ("4K", 4096),
        ("4KB", 4096),
        ("1024", 1024),
        ("1024B", 1024),
        ("1.5GiB", 3 << 29),
        (2048, 2048),
        (0, 0),
    ],
)
def test_size_forms(text: object, size: int) -> None:
    assert parse_size(text, "x") == size


@pytest.mark.parametrize("value", ["", "MiB", "1TiB", "64 MiBs", "-1", "0.1K", -1, 1.5, True, None])
def test_bad_sizes_are_refused(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^limits\.max_packet_size: expected a"):
        parse_size(value, "limits.max_packet_size")


@given(st.integers(min_value=0, max_value=10**9))
def test_milliseconds_are_thousandths(ms: int) -> None:
    assert parse_duration(f"{ms}ms", "x") == pytest.approx(ms / 1000)


# --- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address", "canonical"),
    [
        ("127.0.0.1:6033", Address("tcp", "127.0.0.1", 6033), "127.0.0.1:6033"),
        ("localhost:3306", Address("tcp", "localhost", 3306), "localhost:3306"),
        ("db-1.internal_x:1", Address("tcp", "db-1.internal_x", 1), "db-1.internal_x:1"),
        ("0.0.0.0:65535", Address("tcp", "0.0.0.0", 65535), "0.0.0.0:65535"),
        ("[::1]:6033", Address("tcp", "::1", 6033), "[::1]:6033"),
        ("[0:0:0:0:0:0:0:1]:6033", Address("tcp", "::1", 6033), "[::1]:6033"),
        ("[fe80::1%eth0]:6033", Address("tcp", "fe80::1%eth0", 6033), "[fe80::1%eth0]:6033"),
        (
            "unix:/run/sluice/mysql.sock",
            Address("unix", path="/run/sluice/mysql.sock"),
            "unix:/run/sluice/mysql.sock",
        ),
        ("unix:relative.sock", Address("unix", path="relative.sock"), "unix:relative.sock"),
    ],
)
def test_address_forms(text: str, address: Address, canonical: str) -> None:
    parsed = parse_address(text, "listen")
    assert parsed == address
    assert str(parsed) == canonical
    assert parse_address(str(parsed), "listen") == parsed
    assert Address.parse(text, "listen") == parsed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "localhost",
        ":6033",
        "127.0.0.1:",
        "127.0.0.1:port",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "::1:6033",
        "[::1]",
        "[not-ip]:6033",
        "300.1.1.1:6033",
        "bad host:6033",
        "unix:",
        "tcp://127.0.0.1:6033",
        6033,
        None,
    ],
)
def test_bad_addresses_are_refused(text: object) -> None:
    with pytest.raises(ConfigError, match=r"^upstream\.servers\[0\]\.address: expected"):
        parse_address(text, "upstream.servers[0].address")


def test_zero_port_only_when_the_caller_allows_it() -> None:
    assert parse_address("127.0.0.1:0", "listen", allow_zero_port=True).port == 0
    with pytest.raises(ConfigError):
        parse_address("127.0.0.1:0", "listen")


@given(st.ip_addresses(), st.integers(min_value=1, max_value=65535))
def test_address_text_round_trips(ip: object, port: int) -> None:
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    address = parse_address(f"{host}:{port}", "x")
    assert address.port == port
    assert parse_address(str(address), "x") == address


# --- files ---------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("tier: local\nlisten: 127.0.0.1:6033\npool:\n  max_connections: [24\nlog: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line ")
    assert "invalid YAML" in message
    line = int(message.split("line ")[1].split(",")[0])
    assert 4 <= line <= 5, message


def test_validation_error_in_a_file_is_prefixed_with_the_file(tmp_path: Path) -> None:
    data = minimal()
    data["pool"] = {"max_connections": "lots"}
    path = tmp_path / "sluice.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value) == f"{path}: pool.max_connections: expected a positive integer, got 'lots'"
    )
    assert info.value.source == str(path) and info.value.path == "pool.max_connections"


def test_repeated_key_in_a_file_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    text = yaml.safe_dump(minimal()) + "pool: {max_connections: 4}\npool: {max_connections: 8}\n"
    path.write_text(text)
    lines = text.splitlines()
    second = len(lines)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line {second}, column 1: invalid YAML")
    assert f"duplicate key 'pool' (first at line {second - 1})" in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match=r"absent\.yaml: no such file"):
        load_config(path)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml: \(top level\): .* an empty document"):
        load_config(path)


def test_yaml_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "tier: remote\n"
        "listen: 127.0.0.1:6033\n"
        "users: [{name: app, password: app-pass}]\n"
        "upstream:\n"
        "  servers: [{name: db1, address: '127.0.0.1:3306'}]\n"
        "  monitor: &creds {user: sluice, password: shared}\n"
        "  replication: {<<: *creds, user: repl}\n"
    )
    assert load_config(path).upstream.replication == Credentials("repl", "shared")


# --- back to dicts -------------------------------------------------------------------------------


def _full_config() -> Config:
    data = example()
    data["users"].append({"name": "batch", "password": "app-pass"})
    data["limits"] = {"max_packet_size": "1MiB"}
    data["log"] = {"format": "json"}
    return parse_config(data)


def test_redacted_dict_contains_no_secrets() -> None:
    shown = config_to_dict(_full_config())
    text = yaml.safe_dump(shown)
    for secret in SECRETS:
        assert secret not in text
    assert "2470C0C0" not in text.upper()
    assert shown["admin"]["password"] == "***" and shown["admin"]["token"] == "***"
    assert shown["users"] == [
        {"name": "app", "password_hash": "***"},
        {"name": "batch", "password": "***"},
    ]
    assert shown["upstream"]["monitor"] == {"user": "sluice", "password": "***"}


def test_unredacted_dict_round_trips_through_parse_config() -> None:
    cfg = _full_config()
    plain = config_to_dict(cfg, redact=False)
    assert parse_config(copy.deepcopy(plain)) == cfg
    assert parse_config(yaml.safe_load(yaml.safe_dump(plain))) == cfg
    assert plain["listen"] == ["127.0.0.1:6033", "unix:/run/sluice/mysql.sock"]


def test_minimal_config_round_trips_without_optional_sections() -> None:
    cfg = parse_config(minimal())
    plain = config_to_dict(cfg, redact=False)
    assert "mysql" not in plain["admin"] and "monitor" not in plain["upstream"]
    assert parse_config(plain) == cfg


@pytest.mark.parametrize("name", ["remote.yaml", "local.yaml"])
def test_the_deploy_examples_are_valid_configs(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parent.parent / "deploy" / name)
    assert cfg.tier == name.split(".")[0]


def test_secrets_can_come_from_files_and_are_read_again_on_reload(tmp_path: Path) -> None:
    """Kubernetes and Docker hand out secrets as mounted files: `<secret>_file` reads one."""
    secret = tmp_path / "app-password"
    secret.write_text("s3cret\n")
    token = tmp_path / "token"
    token.write_text("tok-1\r\n")
    data = minimal()
    data["users"] = [{"name": "app", "password_file": str(secret)}]
    data["admin"] = {"http": "127.0.0.1:9033", "token_file": str(token)}
    path = tmp_path / "tier.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    assert cfg.user("app").password == "s3cret"
    assert cfg.admin.token == "tok-1"
    secret.write_text("rotated")
    assert load_config(path).user("app").password == "rotated"


def test_a_secret_file_that_cannot_be_read_or_doubles_a_value_is_refused(tmp_path: Path) -> None:
    data = minimal()
    data["users"] = [{"name": "app", "password_file": str(tmp_path / "missing")}]
    assert refused(data) == (
        f"users[0].password_file: cannot read {tmp_path / 'missing'}: No such file or directory"
    )
    (tmp_path / "pw").write_text("x")
    data["users"] = [{"name": "app", "password": "x", "password_file": str(tmp_path / "pw")}]
    assert refused(data) == "users[0].password_file: give password or password_file, not both"


def test_the_fleet_section_is_validated() -> None:
    data = minimal()
    data["fleet"] = {"etcd": ["127.0.0.1:2379"], "cluster": "main", "lease_ttl": "5s"}
    cfg = parse_config(data)
    assert cfg.fleet is not None and str(cfg.fleet.etcd[0]) == "127.0.0.1:2379"
    assert cfg.fleet.lease_ttl == 5.0 and cfg.fleet.name == ""
    data["fleet"] = {"etcd": ["unix:/tmp/etcd.sock"]}
    assert refused(data) == "fleet.etcd[0]: expected host:port, got 'unix:/tmp/etcd.sock'"
    data["fleet"] = {"etcd": ["127.0.0.1:2379"], "lease_ttl": "500ms"}
    assert "fleet.lease_ttl: expected at least 2s" in refused(data)
    data["fleet"] = {"etcd": ["127.0.0.1:2379"], "cluster": "a/b"}
    assert refused(data).startswith("fleet.cluster: expected letters")
    data["fleet"] = {"cluster": "main"}
    assert "fleet.etcd" in refused(data)


def test_automatic_failover_needs_a_fleet_and_a_replication_account() -> None:
    data = minimal()
    data["tier"] = "remote"
    data["upstream"] = {
        "servers": [{"name": "db1", "address": "10.0.0.21:3306"}],
        "monitor": {"user": "sluice", "password": "m"},
    }
    data["failover"] = {"mode": "auto"}
    assert refused(data).startswith("failover.mode: 'auto' needs fleet.etcd")
    data["fleet"] = {"etcd": ["127.0.0.1:2379"]}
    assert refused(data) == (
        "failover.mode: 'auto' needs upstream.replication (what replicas log in with)"
    )
    data["upstream"]["replication"] = {"user": "repl", "password": "r"}
    data["failover"]["min_interval"] = "2m"
    cfg = parse_config(data)
    assert cfg.failover.mode == "auto" and cfg.failover.min_interval == 120.0
