"""Test certificates made with `cryptography`: a CA, server and client certificates it signed,
and a second CA that signed nothing of ours (to be refused)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: str
    key: str


@dataclass(frozen=True)
class Certs:
    ca: str
    other_ca: str
    server: Pair  # for 127.0.0.1 and localhost
    client: Pair  # CN=app
    dir: Path

    def new_server(self, name: str) -> Pair:
        """Another server certificate from the same CA (a rotation)."""
        return _issue(self.dir, name, _load_ca(self.dir / "ca"), server=True)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(path: Path, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> Pair:
    cert_path = path.with_suffix(".pem")
    key_path = path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return Pair(str(cert_path), str(key_path))


def _ca(path: Path, name: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    _write(path, cert, key)
    return cert, key


def _load_ca(path: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    cert = x509.load_pem_x509_certificate(path.with_suffix(".pem").read_bytes())
    key = serialization.load_pem_private_key(path.with_suffix(".key").read_bytes(), None)
    return cert, key  # type: ignore[return-value]


def _issue(
    dir: Path, name: str, ca: tuple[x509.Certificate, rsa.RSAPrivateKey], *, server: bool
) -> Pair:
    ca_cert, ca_key = ca
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost" if server else "app")])
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return _write(dir / name, builder.sign(ca_key, hashes.SHA256()), key)


def make_certs(dir: Path) -> Certs:
    dir.mkdir(parents=True, exist_ok=True)
    ca = _ca(dir / "ca", "sluice test CA")
    _ca(dir / "other-ca", "some other CA")
    return Certs(
        ca=str(dir / "ca.pem"),
        other_ca=str(dir / "other-ca.pem"),
        server=_issue(dir, "server", ca, server=True),
        client=_issue(dir, "client", ca, server=False),
        dir=dir,
    )
