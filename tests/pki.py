"""A certificate authority made at run time, for the TLS tests (tests/test_tls.py and
tests/test_node_auth.py): CAs, server and client certificates as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: A name the server certificate carries besides localhost and 127.0.0.1.
OTHER_NAME = "optiserve.test"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@dataclass(frozen=True)
class Authority:
    """A CA that issues certificates into ``directory``."""

    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    directory: Path

    @classmethod
    def create(cls, directory: Path, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        _write(directory / name, cert, key)
        return cls(name, cert, key, directory)

    @property
    def cert_file(self) -> str:
        return str(self.directory / f"{self.name}.crt")

    def issue(self, name: str, *, server: bool) -> tuple[str, str]:
        """A leaf certificate (server: for localhost, 127.0.0.1 and OTHER_NAME; else a
        client certificate); returns (cert_file, key_file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
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
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName(OTHER_NAME),
                        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        _write(self.directory / name, cert, key)
        return str(self.directory / f"{name}.crt"), str(self.directory / f"{name}.key")


@dataclass(frozen=True)
class Pki:
    """The server's CA and certificate, the client CA, a client certificate it signed, and
    one signed by a CA the server does not trust."""

    ca: str
    server_cert: str
    server_key: str
    client_ca: str
    client_cert: str
    client_key: str
    rogue_cert: str
    rogue_key: str
    #: The key of another certificate of the server CA (not the server certificate's).
    other_key: str


def build_pki(directory: Path) -> Pki:
    """A server CA, a client CA and a rogue CA in ``directory``, and their certificates."""
    server_ca = Authority.create(directory, "server-ca")
    client_ca = Authority.create(directory, "client-ca")
    rogue_ca = Authority.create(directory, "rogue-ca")
    server_cert, server_key = server_ca.issue("server", server=True)
    client_cert, client_key = client_ca.issue("client", server=False)
    rogue_cert, rogue_key = rogue_ca.issue("rogue", server=False)
    _, other_key = server_ca.issue("other", server=True)
    return Pki(
        server_ca.cert_file,
        server_cert,
        server_key,
        client_ca.cert_file,
        client_cert,
        client_key,
        rogue_cert,
        rogue_key,
        other_key,
    )
