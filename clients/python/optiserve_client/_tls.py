"""Channel TLS: the client options ``tls``, ``ca_file``, ``cert_file``, ``key_file`` and
``server_name`` as gRPC channel credentials and options."""

from __future__ import annotations

from pathlib import Path

import grpc


class TLSOptionError(ValueError):
    """A TLS option is wrong: a file that cannot be read, a certificate without its key."""


def _read(option: str, path: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise TLSOptionError(f"{option}: cannot read {path}: {exc.strerror or exc}") from exc


def wants_tls(
    tls: bool,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    server_name: str | None,
) -> bool:
    """TLS is on when asked for, or when any TLS file or name is given."""
    return tls or any((ca_file, cert_file, key_file, server_name))


def channel_credentials(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials:
    """TLS credentials: trust ``ca_file`` (PEM; None = the system's roots) and, for mutual
    TLS, present ``cert_file`` with its ``key_file``. Reads the files now."""
    if bool(cert_file) != bool(key_file):
        given, missing = ("cert_file", "key_file") if cert_file else ("key_file", "cert_file")
        raise TLSOptionError(f"{given} is set without {missing}; a client certificate needs both")
    return grpc.ssl_channel_credentials(
        root_certificates=_read("ca_file", ca_file) if ca_file else None,
        private_key=_read("key_file", key_file) if key_file else None,
        certificate_chain=_read("cert_file", cert_file) if cert_file else None,
    )


def server_name_options(server_name: str | None) -> list[tuple[str, str]]:
    """Channel options that check the server's certificate against ``server_name`` instead
    of the target's host (for certificates issued to another name)."""
    return [("grpc.ssl_target_name_override", server_name)] if server_name else []
