"""API keys: the ``[auth]`` settings and the keys file, stored hashed.

A key is ``osk_`` followed by 43 random URL-safe characters. It is shown once, by
``optiserve keys create``, and never stored: the keys file holds, per key, the SHA-256 of
the file's random salt followed by the key, with the key's id, tenant, scopes, name and
dates. A presented key is hashed the same way and compared with every stored hash with
:func:`hmac.compare_digest` (constant time, no early exit), so the time a check takes does
not tell how close a guess was.

The file is JSON, written atomically (a temporary file in the same directory, then a
rename), so the server never reads half a file; the server re-reads it when its
modification time or size changes, checked at most once a second, so a revocation takes
effect without a restart.

Nothing here imports grpc: the rpc layer (``rpc/auth.py``) reads the metadata and turns
the outcome into a status.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from optiserve.domain.key_limits import check_own_limits
from optiserve.domain.settings import check

log = logging.getLogger(__name__)

#: What a key may do beyond generation: Quantize and Benchmark each need their scope when
#: ``auth.required`` is true.
Scope = Literal["quantize", "benchmark"]
SCOPES: tuple[str, ...] = get_args(Scope)
KEY_PREFIX = "osk_"
FILE_VERSION = 1
#: Seconds between two looks at the keys file's modification time.
RELOAD_INTERVAL_S = 1.0


class KeysFileError(Exception):
    """The keys file cannot be read or written, or is not a keys file."""


class UnsafeListenAddress(Exception):
    """The server would listen beyond loopback with no authentication."""


@dataclass(frozen=True)
class AuthConfig:
    """API keys (``[auth]``)."""

    #: Every OptiServe call needs a valid key (health and reflection never do); Quantize and
    #: Benchmark also need their scope.
    required: bool = False
    #: The keys file ("" = keys.json in the data directory).
    keys_file: str = ""
    #: Allow listening on a non-loopback address with ``required = false``.
    allow_unauthenticated: bool = False

    def __post_init__(self) -> None:
        check(self)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts local connections."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def check_listen_address(host: str, auth: AuthConfig) -> None:
    """Raise :class:`UnsafeListenAddress` for a non-loopback ``host`` without auth."""
    if auth.required or auth.allow_unauthenticated or is_loopback(host):
        return
    raise UnsafeListenAddress(
        f"server.host is {host!r}, reachable beyond this machine, and auth.required is "
        "false, so anyone who can connect could use the server and claim any tenant. Set "
        "auth.required = true and create keys with `optiserve keys create --tenant NAME`; "
        "or listen on 127.0.0.1; or, to serve without keys anyway (e.g. behind an "
        "authenticating proxy), set auth.allow_unauthenticated = true"
    )


@dataclass(frozen=True)
class ApiKey:
    """One key as stored (never the key itself)."""

    id: str
    tenant: str
    hash: str
    scopes: tuple[str, ...] = ()
    name: str = ""
    created_at: str = ""
    #: When it was revoked ("" = active).
    revoked_at: str = ""
    #: The key's own limits (:class:`optiserve.domain.key_limits.KeyLimits` field ->
    #: value), each overriding ``[key_limits]``'s for this key.
    limits: Mapping[str, float] = field(default_factory=dict, hash=False)

    @property
    def revoked(self) -> bool:
        """Whether the key was revoked."""
        return bool(self.revoked_at)

    def to_json(self) -> dict[str, Any]:
        """The record as stored in the file."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "scopes": list(self.scopes),
            "name": self.name,
            "hash": self.hash,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            **({"limits": dict(self.limits)} if self.limits else {}),
        }

    @classmethod
    def from_json(cls, data: Any) -> ApiKey:
        """A record from the file; ValueError when a field is missing or wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a key entry is not an object: {data!r}")
        scopes = data.get("scopes", [])
        if not isinstance(scopes, list) or any(s not in SCOPES for s in scopes):
            raise ValueError(f"key {data.get('id')!r}: scopes must be a list of {SCOPES}")
        fields = ("id", "tenant", "hash", "name", "created_at", "revoked_at")
        values = {k: data.get(k, "") for k in fields}
        if not all(isinstance(v, str) for v in values.values()):
            raise ValueError(f"key {data.get('id')!r}: {', '.join(fields)} must be strings")
        if not values["id"] or not values["tenant"] or not values["hash"]:
            raise ValueError(f"key {data.get('id')!r}: id, tenant and hash are required")
        limits = data.get("limits", {})
        if not isinstance(limits, dict):
            raise ValueError(f"key {data.get('id')!r}: limits must be an object")
        try:
            own = check_own_limits(limits)
        except ValueError as exc:
            raise ValueError(f"key {data.get('id')!r}: {exc}") from None
        return cls(scopes=tuple(scopes), limits=own, **values)


@dataclass
class KeysFile:
    """The contents of a keys file: a salt and the keys."""

    salt: str = field(default_factory=lambda: secrets.token_hex(16))
    keys: list[ApiKey] = field(default_factory=list)

    def hash_of(self, key: str) -> str:
        """The stored form of ``key``."""
        return hashlib.sha256(bytes.fromhex(self.salt) + key.encode("utf-8")).hexdigest()

    def find(self, key: str) -> ApiKey | None:
        """The record of ``key`` (revoked ones included), compared in constant time."""
        digest = self.hash_of(key).encode()
        found = None
        for record in self.keys:  # no early exit: every stored hash is compared
            if hmac.compare_digest(digest, record.hash.encode()):
                found = record
        return found


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def default_keys_path(auth: AuthConfig, data_dir: Path) -> Path:
    """Where the keys file is: ``auth.keys_file`` or keys.json in the data directory."""
    return Path(auth.keys_file).expanduser() if auth.keys_file else data_dir / "keys.json"


def read_keys_file(path: Path) -> KeysFile:
    """The keys file at ``path`` (an empty one when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return KeysFile()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"cannot read the keys file {path}: {exc}") from exc
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
            raise ValueError(f"expected an object with version {FILE_VERSION}")
        salt = data.get("salt")
        if not isinstance(salt, str) or len(bytes.fromhex(salt)) < 8:
            raise ValueError("salt must be a hex string of at least 8 bytes")
        keys = data.get("keys", [])
        if not isinstance(keys, list):
            raise ValueError("keys must be a list")
        return KeysFile(salt, [ApiKey.from_json(k) for k in keys])
    except ValueError as exc:
        raise KeysFileError(
            f"the keys file {path} is not a valid optiserve keys file ({exc}); fix or move "
            "it, then manage keys with `optiserve keys`"
        ) from exc


def write_keys_file(path: Path, contents: KeysFile) -> None:
    """Write ``contents`` to ``path`` atomically (temporary file, fsync, rename), mode 0600."""
    data = {
        "version": FILE_VERSION,
        "salt": contents.salt,
        "keys": [k.to_json() for k in contents.keys],
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise KeysFileError(f"cannot write the keys file {path}: {exc}") from exc


def create_key(
    path: Path,
    tenant: str,
    scopes: tuple[str, ...] = (),
    name: str = "",
    limits: Mapping[str, float] | None = None,
) -> tuple[ApiKey, str]:
    """Add a key for ``tenant`` (with its own ``limits``, if any) to the file; return its
    record and the key (shown once). ValueError for a bad tenant, scope or limit."""
    tenant = tenant.strip()
    if not tenant or len(tenant) > 128 or not all("\x21" <= c <= "\x7e" for c in tenant):
        raise ValueError(
            f"the tenant must be 1 to 128 printable ASCII characters without spaces, got {tenant!r}"
        )
    if tenant.startswith("key-") or tenant == "anonymous":
        raise ValueError(
            f"the tenant {tenant!r} is reserved (callers without a known key are accounted "
            "as 'anonymous' or 'key-<hash>'); choose another name"
        )
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}")
    own = check_own_limits(limits or {})
    contents = read_keys_file(path)
    taken = {k.id for k in contents.keys}
    key_id = secrets.token_hex(4)
    while key_id in taken:
        key_id = secrets.token_hex(4)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        id=key_id,
        tenant=tenant,
        hash=contents.hash_of(key),
        scopes=tuple(dict.fromkeys(scopes)),
        name=name,
        created_at=_now(),
        limits=own,
    )
    contents.keys.append(record)
    write_keys_file(path, contents)
    return record, key


def revoke_key(path: Path, key_id: str) -> ApiKey:
    """Mark the key ``key_id`` revoked (it stays listed); KeyError when there is none."""
    contents = read_keys_file(path)
    for i, record in enumerate(contents.keys):
        if record.id == key_id:
            if not record.revoked:
                contents.keys[i] = record = replace(record, revoked_at=_now())
                write_keys_file(path, contents)
            return record
    raise KeyError(key_id)


class KeyStore:
    """The server's view of the keys file, re-read when the file changes."""

    def __init__(self, path: Path, clock: Any = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._contents = read_keys_file(path)
        self._stamp = self._stat()
        self._checked = clock()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    @property
    def keys(self) -> list[ApiKey]:
        """The keys as last read."""
        return list(self._contents.keys)

    def refresh(self) -> None:
        """Re-read the file if it changed (looking at most once a second). A file that has
        become unreadable or invalid is logged and the keys read before are kept."""
        now = self._clock()
        if now - self._checked < RELOAD_INTERVAL_S:
            return
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp:
            return
        try:
            self._contents = read_keys_file(self.path)
        except KeysFileError as exc:
            log.error("keys file not reloaded; the keys read before stay: %s", exc)
            return
        self._stamp = stamp
        log.info("keys file reloaded", extra={"keys": len(self._contents.keys)})

    def find(self, key: str) -> ApiKey | None:
        """The record of the presented ``key`` (revoked ones included), or None."""
        self.refresh()
        return self._contents.find(key)
