"""API keys: scoped to a tenant and a set of roles, stored hashed.

A key reads ``pk_<key id>_<secret>``. The key id (public, 12 hex digits) finds the
record; the secret (32 random bytes) is checked against an HMAC-SHA256 under a per-key
salt with a constant-time compare. Keys are random, not passwords, so a slow KDF would
add latency to every request and no strength; the file never holds a usable key.

The key file is JSON (mode 0600), by default ``api-keys.json`` in the store directory.
The server re-reads it when it changes, so ``pertinent keys revoke`` takes effect on a
running server at its next request.

Roles: ``reader`` retrieves and reads profile summaries; ``writer`` also records
events and memories and ingests user-owned documents; ``admin`` also ingests shared
documents and forgets users.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast

from pertinent.errors import ConfigurationError, InvalidInput
from pertinent.server.tenancy import check_tenant
from pertinent.types import utcnow

__all__ = ["ROLES", "ApiKey", "KeyStore", "NewKey", "Role"]

Role = Literal["reader", "writer", "admin"]
ROLES: tuple[Role, ...] = ("reader", "writer", "admin")
_KEY_PREFIX = "pk_"


@dataclass(frozen=True)
class ApiKey:
    """A key's record as the server sees it (never the secret)."""

    key_id: str
    tenant: str
    roles: frozenset[Role]
    created: datetime
    revoked: datetime | None = None
    name: str | None = None

    def allows(self, *roles: Role) -> bool:
        return bool(self.roles.intersection(roles))


@dataclass(frozen=True)
class NewKey:
    """What `KeyStore.create` returns: the only time the full key exists."""

    key: str
    record: ApiKey


def _digest(salt: bytes, secret: str) -> str:
    return hmac.new(salt, secret.encode("utf-8"), hashlib.sha256).hexdigest()


def _check_roles(roles: Iterable[str]) -> frozenset[Role]:
    chosen = set(roles)
    unknown = chosen.difference(ROLES)
    if unknown or not chosen:
        raise InvalidInput(
            f"Roles must be a non-empty subset of {', '.join(ROLES)}; got {sorted(chosen)}."
        )
    return frozenset(cast(Role, r) for r in chosen)


class KeyStore:
    """The key file, with a cache that follows its modification time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ file

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._entries = None, {}
            return self._entries
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                entries = {str(e["key_id"]): dict(e) for e in raw["keys"]}
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigurationError(
                    f"The key file {self.path} cannot be read ({exc}); restore it or create "
                    "keys again with `pertinent keys create`."
                ) from exc
            self._stamp, self._entries = stamp, entries
        return self._entries

    def _save(self, entries: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"version": 1, "keys": list(entries.values())}, indent=2)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data + "\n")
        os.replace(tmp, self.path)
        self._stamp = None  # re-read (and re-stat) on next use

    @staticmethod
    def _record(e: dict[str, Any]) -> ApiKey:
        return ApiKey(
            key_id=e["key_id"],
            tenant=e["tenant"],
            roles=_check_roles(e["roles"]),
            created=datetime.fromisoformat(e["created"]),
            revoked=datetime.fromisoformat(e["revoked"]) if e.get("revoked") else None,
            name=e.get("name"),
        )

    # ------------------------------------------------------------------ management

    def create(self, tenant: str, roles: Iterable[str], *, name: str | None = None) -> NewKey:
        check_tenant(tenant)
        chosen = _check_roles(roles)
        with self._lock:
            entries = dict(self._load())
            key_id = secrets.token_hex(6)
            while key_id in entries:
                key_id = secrets.token_hex(6)
            secret = secrets.token_urlsafe(32)
            salt = secrets.token_bytes(16)
            entries[key_id] = {
                "key_id": key_id,
                "tenant": tenant,
                "roles": sorted(chosen),
                "name": name,
                "salt": salt.hex(),
                "hash": _digest(salt, secret),
                "created": utcnow().isoformat(),
                "revoked": None,
            }
            self._save(entries)
            record = self._record(entries[key_id])
        return NewKey(key=f"{_KEY_PREFIX}{key_id}_{secret}", record=record)

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        with self._lock:
            entries = list(self._load().values())
        out = [self._record(e) for e in entries]
        return sorted(
            (k for k in out if tenant is None or k.tenant == tenant),
            key=lambda k: (k.tenant, k.created),
        )

    def revoke(self, key_id: str) -> ApiKey:
        """Mark a key revoked (kept in the file for the audit trail)."""
        with self._lock:
            entries = dict(self._load())
            if key_id not in entries:
                raise InvalidInput(f"No key with id {key_id!r}; `pertinent keys list` shows ids.")
            entry = dict(entries[key_id])
            entry["revoked"] = entry.get("revoked") or utcnow().isoformat()
            entries[key_id] = entry
            self._save(entries)
            return self._record(entry)

    # ------------------------------------------------------------------ checking

    def verify(self, key: str) -> ApiKey | None:
        """The record of a valid, unrevoked key; None for anything else (the caller
        answers 401 without saying which part was wrong)."""
        if not isinstance(key, str) or not key.startswith(_KEY_PREFIX):
            return None
        key_id, sep, secret = key[len(_KEY_PREFIX) :].partition("_")
        if not sep or not secret:
            return None
        with self._lock:
            entry = self._load().get(key_id)
        if entry is None or entry.get("revoked"):
            return None
        expected = str(entry["hash"])
        actual = _digest(bytes.fromhex(entry["salt"]), secret)
        if not hmac.compare_digest(expected, actual):
            return None
        return self._record(entry)
