"""mysql_native_password: scrambles, tokens, verification and credential recovery.

The server stores stage2 = SHA1(SHA1(password)). A client proves it knows the password with
token = SHA1(password) XOR SHA1(scramble + stage2). Knowing stage2, a proxy can verify the token
and recover stage1 = SHA1(password), which is all it needs to log in upstream with a fresh
scramble — so sluice never needs plaintext passwords.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from .constants import SCRAMBLE_LENGTH


def new_scramble() -> bytes:
    """20 random printable bytes, never NUL (drivers treat the scramble as a C string)."""
    return bytes(33 + secrets.randbelow(94) for _ in range(SCRAMBLE_LENGTH))


def sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()


def stage1(password: str | bytes) -> bytes:
    raw = password.encode() if isinstance(password, str) else password
    return sha1(raw)


def stage2_from_stage1(s1: bytes) -> bytes:
    return sha1(s1)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def native_token(s1: bytes, scramble: bytes) -> bytes:
    """The client's auth response for a scramble, from stage1 = SHA1(password)."""
    return _xor(s1, sha1(scramble[:SCRAMBLE_LENGTH] + sha1(s1)))


def recover_stage1(token: bytes, scramble: bytes, stage2: bytes) -> bytes | None:
    """SHA1(password) if `token` answers `scramble` for the account with `stage2`, else None."""
    if len(token) != SCRAMBLE_LENGTH or len(stage2) != SCRAMBLE_LENGTH:
        return None
    s1 = _xor(token, sha1(scramble[:SCRAMBLE_LENGTH] + stage2))
    return s1 if hmac.compare_digest(sha1(s1), stage2) else None
