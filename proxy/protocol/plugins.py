"""Authentication plugin exchanges as sans-I/O state machines, both directions.

Server side (sluice toward its clients): an exchange is fed the client's auth data and answers
with steps: payloads to send (auth switch, AuthMoreData), and finally Verified or Denied. The
login driver (proxy/login.py) frames and sends, and sends OK or ERR at the end. Client side
(sluice logging in upstream): UpstreamAuth answers what the server sends.

What a login reveals is kept as Secrets, which is what sluice needs to log in upstream as the
same user: SHA1(password) for mysql_native_password, SHA256(password) for caching_sha2's fast
path, the password itself for caching_sha2's full authentication.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from .auth import (
    MORE_DATA,
    SHA2_FAST_AUTH_SUCCESS,
    SHA2_PERFORM_FULL_AUTH,
    SHA2_REQUEST_PUBLIC_KEY,
    native_token,
    recover_sha256,
    recover_stage1,
    rsa_decrypt_password,
    rsa_encrypt_password,
    sha1,
    sha2_cache_entry,
    sha2_token,
    sha256,
    stage1,
)
from .codec import ProtocolError
from .constants import CACHING_SHA2_PASSWORD, NATIVE_PASSWORD, SCRAMBLE_LENGTH

PLUGINS = (NATIVE_PASSWORD, CACHING_SHA2_PASSWORD)
"""The plugins sluice speaks to clients and upstream."""


@dataclass(frozen=True, slots=True)
class Secrets:
    """What sluice knows of a user's password: enough to log in upstream with some plugin."""

    password: bytes | None = None  # the password itself (config plaintext or full auth)
    stage1: bytes | None = None  # SHA1(password): mysql_native_password
    sha256: bytes | None = None  # SHA256(password): caching_sha2 fast path

    @classmethod
    def of_password(cls, password: bytes) -> Secrets:
        if not password:
            return cls(b"", b"", b"")
        return cls(password, stage1(password), sha256(password))

    def merged(self, other: Secrets | None) -> Secrets:
        if other is None:
            return self
        return Secrets(
            self.password if self.password is not None else other.password,
            self.stage1 if self.stage1 is not None else other.stage1,
            self.sha256 if self.sha256 is not None else other.sha256,
        )


@dataclass(frozen=True, slots=True)
class Account:
    """A configured user as an exchange sees it."""

    name: str
    stage2: bytes  # SHA1(SHA1(password)), as mysql.user keeps it for native
    known: Secrets  # from a plaintext password in the config, or learned at a full login
    sha2_entry: bytes | None = None  # SHA256(SHA256(password)): the fast path's cache entry

    @property
    def empty_password(self) -> bool:
        return self.known.password == b""

    def check_password(self, password: bytes) -> bool:
        """A cleartext password against what the config holds (plaintext, or the hash)."""
        if self.known.password is not None:
            return hmac.compare_digest(password, self.known.password)
        return hmac.compare_digest(sha1(sha1(password)), self.stage2) if password else False


# --- steps -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Verified:
    secrets: Secrets
    full: bool = False  # the password itself was checked (caching_sha2 full authentication)


@dataclass(frozen=True, slots=True)
class Denied:
    used_password: bool
    reason: str = "wrong password"


Step = Send | Verified | Denied


# --- server side -------------------------------------------------------------------------------


class NativeExchange:
    """mysql_native_password: one token, verified from the stored hash (and revealing
    SHA1(password))."""

    plugin = NATIVE_PASSWORD

    def __init__(self, scramble: bytes, account: Account | None) -> None:
        self.scramble = scramble
        self.account = account

    def receive(self, token: bytes) -> list[Step]:
        account = self.account
        if account is None:
            return [Denied(bool(token), "unknown user")]
        if not token:
            ok = account.empty_password
            return [Verified(Secrets.of_password(b"")) if ok else Denied(False)]
        s1 = recover_stage1(token, self.scramble, account.stage2)
        if s1 is None:
            return [Denied(True)]
        return [Verified(Secrets(stage1=s1).merged(account.known))]


class CachingSha2Exchange:
    """caching_sha2_password, as a MySQL 8 server speaks it.

    The fast path needs the user's cache entry (from a plaintext password in the config, or
    learned at an earlier full authentication); otherwise, full authentication: the password
    in clear over a secure channel (TLS, unix socket), or RSA-encrypted with sluice's key,
    which the client may ask for. A user with only a native hash in the config can log in
    this way: the cleartext is checked against the hash."""

    plugin = CACHING_SHA2_PASSWORD
    FIRST, FULL, RSA, DONE = range(4)

    def __init__(
        self,
        scramble: bytes,
        account: Account | None,
        *,
        secure: bool,
        rsa_key: object | None = None,
        public_key_pem: bytes = b"",
    ) -> None:
        self.scramble = scramble
        self.account = account
        self.secure = secure
        self.rsa_key = rsa_key
        self.public_key_pem = public_key_pem
        self.state = self.FIRST

    def receive(self, payload: bytes) -> list[Step]:
        if self.state == self.FIRST:
            return self._first(payload)
        if self.state == self.FULL:
            return self._full(payload)
        if self.state == self.RSA:
            return self._rsa(payload)
        raise ProtocolError("caching_sha2_password exchange is over")

    def _first(self, token: bytes) -> list[Step]:
        account = self.account
        if not token or token == b"\0":
            self.state = self.DONE
            if account is not None and account.empty_password:
                return [Verified(Secrets.of_password(b""))]
            return [Denied(False, "unknown user" if account is None else "wrong password")]
        if account is not None and account.sha2_entry is not None:
            s256 = recover_sha256(token, self.scramble, account.sha2_entry)
            self.state = self.DONE
            if s256 is None:
                return [Denied(True)]
            secrets = Secrets(sha256=s256).merged(account.known)
            return [Send(MORE_DATA + SHA2_FAST_AUTH_SUCCESS), Verified(secrets)]
        # No cache entry for this user (or no such user: answered the same way, so the
        # exchange does not tell who exists): the client must send the password itself.
        self.state = self.FULL
        return [Send(MORE_DATA + SHA2_PERFORM_FULL_AUTH)]

    def _full(self, payload: bytes) -> list[Step]:
        if self.secure and payload != SHA2_REQUEST_PUBLIC_KEY:
            return self._check(payload[:-1] if payload.endswith(b"\0") else payload)
        if payload == SHA2_REQUEST_PUBLIC_KEY:
            if not self.public_key_pem:
                self.state = self.DONE
                return [Denied(True, "no RSA key to send: use TLS")]
            self.state = self.RSA
            return [Send(MORE_DATA + self.public_key_pem)]
        return self._rsa(payload)  # the client had sluice's public key already

    def _rsa(self, payload: bytes) -> list[Step]:
        self.state = self.DONE
        if self.rsa_key is None:
            return [Denied(True, "full authentication needs TLS or an RSA key")]
        password = rsa_decrypt_password(payload, self.scramble, self.rsa_key)
        if password is None:
            return [Denied(True, "the RSA-encrypted password does not decrypt")]
        return self._check(password)

    def _check(self, password: bytes) -> list[Step]:
        self.state = self.DONE
        account = self.account
        if account is None or not account.check_password(password):
            return [Denied(True, "unknown user" if account is None else "wrong password")]
        return [Verified(Secrets.of_password(password), full=True)]


def sha2_entry_of(secrets: Secrets) -> bytes | None:
    """The fast path's cache entry, if the secrets allow it."""
    if secrets.sha256 is not None and secrets.sha256:
        return sha2_cache_entry(secrets.sha256)
    return None


# --- client side (sluice logging in upstream) ---------------------------------------------------


class UpstreamAuthError(Exception):
    """sluice cannot answer what the upstream asks (a plugin it does not speak, or a full
    authentication without knowing the password)."""

    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(message)
        self.plugin = plugin


class UpstreamAuth:
    """Answers an upstream's authentication requests for one login.

    `answer(plugin, data)` gives the auth data for a greeting's or an auth switch's plugin;
    `more(payload)` answers an AuthMoreData (0x01 …) and returns what to send, or None when
    the server's OK or ERR comes next."""

    def __init__(self, user: str, secrets: Secrets, *, secure: bool) -> None:
        self.user = user
        self.secrets = secrets
        self.secure = secure
        self.plugin = NATIVE_PASSWORD
        self.nonce = b""
        self._asked_key = False

    def answer(self, plugin: str, data: bytes) -> bytes:
        self.plugin = plugin
        self.nonce = data[:SCRAMBLE_LENGTH]
        secrets = self.secrets
        if plugin == NATIVE_PASSWORD:
            if secrets.stage1 is None:
                raise UpstreamAuthError(plugin, self._unknown("mysql_native_password"))
            return native_token(secrets.stage1, self.nonce) if secrets.stage1 else b""
        if plugin == CACHING_SHA2_PASSWORD:
            if secrets.sha256 is None:
                if secrets.password is None:
                    raise UpstreamAuthError(plugin, self._unknown("caching_sha2_password"))
                return b""  # nothing to prove the fast path with: the server asks for more
            return sha2_token(secrets.sha256, self.nonce) if secrets.sha256 else b""
        raise UpstreamAuthError(
            plugin,
            f"sluice logs in upstream with {' or '.join(PLUGINS)} only; create the user with "
            "one of those",
        )

    def more(self, payload: bytes) -> bytes | None:
        if self.plugin != CACHING_SHA2_PASSWORD or not payload.startswith(MORE_DATA):
            raise ProtocolError(f"unexpected AuthMoreData for {self.plugin}")
        body = payload[1:]
        if body == SHA2_FAST_AUTH_SUCCESS:
            return None
        password = self.secrets.password
        if body == SHA2_PERFORM_FULL_AUTH:
            if password is None:
                raise UpstreamAuthError(
                    self.plugin,
                    f"the upstream asks for full authentication of user '{self.user}' and "
                    "sluice does not know its password: give it a plaintext password in the "
                    "config, or let the user log in once with caching_sha2 full "
                    "authentication",
                )
            if self.secure:
                return password + b"\0"
            self._asked_key = True
            return SHA2_REQUEST_PUBLIC_KEY
        if self._asked_key and body.startswith(b"-----BEGIN"):
            assert password is not None
            return rsa_encrypt_password(password, self.nonce, body)
        raise ProtocolError("unexpected AuthMoreData from the upstream")

    def _unknown(self, plugin: str) -> str:
        return (
            f"sluice knows no secret of user '{self.user}' that {plugin} can use (it knows the "
            "password only after the client logged in with a plugin that reveals it); give the "
            "user a plaintext password in the config"
        )
