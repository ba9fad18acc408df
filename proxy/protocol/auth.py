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


# --- caching_sha2_password ---------------------------------------------------------------------
#
# The server keeps SHA256(SHA256(password)) in a cache once a user has authenticated fully. A
# client proves the password with token = SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce); the
# server answers 0x01 0x03 (fast_auth_success) when its cache entry verifies that, else 0x01 0x04
# (perform_full_authentication): the client then sends the password itself, in clear over TLS or
# a unix socket, or RSA-OAEP encrypted (password + NUL, XORed with the nonce) with the server's
# public key, which it may ask for with 0x02.

SHA2_FAST_AUTH_SUCCESS = b"\x03"
SHA2_PERFORM_FULL_AUTH = b"\x04"
SHA2_REQUEST_PUBLIC_KEY = b"\x02"
MORE_DATA = b"\x01"  # AuthMoreData: the header of the two answers above and of the public key


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha2_token(sha256_password: bytes, nonce: bytes) -> bytes:
    """A caching_sha2_password client's scramble, from SHA256(password)."""
    return _xor(sha256_password, sha256(sha256(sha256_password) + nonce[:SCRAMBLE_LENGTH]))


def sha2_cache_entry(sha256_password: bytes) -> bytes:
    """What the server keeps to verify the fast path: SHA256(SHA256(password))."""
    return sha256(sha256_password)


def recover_sha256(token: bytes, nonce: bytes, cache_entry: bytes) -> bytes | None:
    """SHA256(password) if `token` answers `nonce` for the cache entry, else None."""
    if len(token) != 32 or len(cache_entry) != 32:
        return None
    candidate = _xor(token, sha256(cache_entry + nonce[:SCRAMBLE_LENGTH]))
    return candidate if hmac.compare_digest(sha256(candidate), cache_entry) else None


def _xor_nonce(data: bytes, nonce: bytes) -> bytes:
    return bytes(b ^ nonce[i % len(nonce)] for i, b in enumerate(data))


def rsa_encrypt_password(password: bytes, nonce: bytes, public_key_pem: bytes) -> bytes:
    """The client's full-authentication message without TLS (RSA-OAEP, SHA-1 as MySQL uses)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    key = serialization.load_pem_public_key(public_key_pem)
    message = _xor_nonce(password + b"\0", nonce[:SCRAMBLE_LENGTH])
    return key.encrypt(  # type: ignore[union-attr]
        message,
        padding.OAEP(
            mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None
        ),
    )


def rsa_decrypt_password(ciphertext: bytes, nonce: bytes, private_key: object) -> bytes | None:
    """The password a client sent RSA-encrypted, or None if it does not decrypt."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        message = private_key.decrypt(  # type: ignore[attr-defined]
            ciphertext,
            padding.OAEP(
                mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None
            ),
        )
    except ValueError:
        return None
    plain = _xor_nonce(message, nonce[:SCRAMBLE_LENGTH])
    return plain[:-1] if plain.endswith(b"\0") else None
