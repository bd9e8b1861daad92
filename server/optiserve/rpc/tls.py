"""Server TLS: the ``[server]`` certificate, key and client CA as gRPC server credentials."""

from __future__ import annotations

from pathlib import Path

import grpc


def _read(path: str) -> bytes:
    return Path(path).expanduser().read_bytes()


def server_credentials(
    cert_file: str, key_file: str, client_ca_file: str = ""
) -> grpc.ServerCredentials | None:
    """TLS credentials from PEM files (None without a certificate: plaintext). With
    ``client_ca_file`` the server requires every client to present a certificate signed by
    it (mutual TLS). Reads the files (blocking); OSError when one cannot be read."""
    if not cert_file:
        return None
    client_ca = _read(client_ca_file) if client_ca_file else None
    return grpc.ssl_server_credentials(
        [(_read(key_file), _read(cert_file))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
