"""Encryption at rest: user-owned records are sealed with AES-GCM before they reach the
store, so a copied disk, a backup or a snapshot of the cluster holds ciphertext.

    px = pertinent.open("./data", encryption_key=key)          # 32 random bytes
    px = pertinent.open("./data", encryption_key=Keyring(new, old))   # during a rotation
    px.rotate_key(new_key)                                      # re-seal everything

What is sealed (docs/privacy.md has the full table and the trade-off):
- events: the text, the item id and the vector (the profile is a fold of these, so the
  profile is sealed too); the kind, weight, time and session id stay plain, because
  retention and the session filter read them;
- session turns: the text and the vector;
- user-owned chunks (long-term memories, owned documents): the text, title, source and
  metadata. Their vector stays in the clear, because the store's ANN index must read it,
  so memories are still found by meaning but no longer by keyword (BM25 sees ciphertext).
Shared documents are not sealed: the BM25 index and the ANN index need them.

A sealed value is text: ``pxe1.`` + base64url(version | key id | nonce | ciphertext+tag),
with a random 96-bit nonce per value. The associated data binds the record kind, its id
and its user, so a blob copied onto another record, or another user's record, fails
authentication instead of being read as theirs. Keys are identified by a hash of the key
(`key_id`), so the store records which key sealed what without holding anything secret.

Why a `Store` wrapper rather than code in each backend: the same sealing then holds on
LanceDB and Weaviate, and the backends stay ignorant of keys. Re-sealing (key rotation)
needs to rewrite rows in place, which `RewritableStore` (LanceDB, Weaviate) offers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pertinent.errors import (
    ConfigurationError,
    DecryptionFailed,
    InvalidInput,
    MissingDependency,
)
from pertinent.stores.base import (
    EventArrays,
    SearchFilter,
    Store,
    StoredEvent,
    StoredTurn,
    event_arrays,
)
from pertinent.types import Chunk, Hit, Vector

__all__ = [
    "CANARY_USER",
    "EncryptedStore",
    "KeyProvider",
    "Keyring",
    "RotationReport",
    "Sealer",
    "as_key_provider",
    "check_store_key",
    "encrypt_store",
    "key_id",
    "load_key_file",
    "new_key",
    "rotating",
]

_PREFIX = "pxe1."
_VERSION = 1
_KEY_ID_BYTES = 8
_NONCE_BYTES = 12
_HEADER = 1 + _KEY_ID_BYTES + _NONCE_BYTES
_KEY_SIZES = (16, 24, 32)
# Settings row that proves which key the store was written with (checked at open).
CANARY_USER = "__pertinent_encryption__"
_CANARY = b"pertinent encryption canary"


def key_id(key: bytes) -> str:
    """A public name for a key: 16 hex digits of a hash of it. Records carry it so a
    store can say which key it needs without holding the key."""
    return hashlib.sha256(b"pertinent-key-id\x00" + bytes(key)).hexdigest()[: 2 * _KEY_ID_BYTES]


def new_key() -> bytes:
    """32 random bytes: an AES-256 key."""
    return os.urandom(32)


def _check_key(key: object) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) not in _KEY_SIZES:
        size = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise InvalidInput(
            f"An encryption key must be 16, 24 or 32 raw bytes (AES-128/192/256), got {size}. "
            "Make one with pertinent.privacy.encryption.new_key() or "
            "`pertinent encryption keygen`."
        )
    return bytes(key)


@runtime_checkable
class KeyProvider(Protocol):
    """Where keys come from (a KMS, a secrets manager, a file).

    Calling it returns the current key, which seals every new record. `lookup` returns
    an older key by its `key_id` (None if unknown), so records sealed before a rotation
    can still be opened until they are re-sealed. Both are called once per record: a
    provider backed by a remote KMS should cache the data keys it unwraps.
    """

    def __call__(self) -> bytes: ...

    def lookup(self, key_id: str) -> bytes | None: ...


class Keyring:
    """A `KeyProvider` over keys held in memory: the current one first, then older ones."""

    def __init__(self, current: bytes, *previous: bytes) -> None:
        self._current = _check_key(current)
        self._keys = {key_id(k): k for k in (self._current, *map(_check_key, previous))}

    def __call__(self) -> bytes:
        return self._current

    def lookup(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)

    def __repr__(self) -> str:  # never print key material
        return f"Keyring(current={key_id(self._current)}, keys={sorted(self._keys)})"


class _CallableProvider:
    """A bare callable (no `lookup`): it can open only what its current key sealed."""

    def __init__(self, fn: Callable[[], bytes]) -> None:
        self._fn = fn

    def __call__(self) -> bytes:
        return _check_key(self._fn())

    def lookup(self, kid: str) -> bytes | None:
        key = self()
        return key if key_id(key) == kid else None


_NO_REWRITE = (
    "Key rotation needs a store that can rewrite rows in place; {} cannot. Rotation is "
    "available on LanceDB and Weaviate; for another backend, export and re-import with "
    "the new key. Nothing was changed."
)


class _Rotating:
    """During a rotation: seals with the new provider's key, opens with either."""

    def __init__(self, new: KeyProvider, old: KeyProvider) -> None:
        self.new = new
        self.old = old

    def __call__(self) -> bytes:
        return self.new()

    def lookup(self, kid: str) -> bytes | None:
        return self.new.lookup(kid) or self.old.lookup(kid)


def rotating(store: object, new_key: bytes | KeyProvider | Callable[[], bytes]) -> EncryptedStore:
    """Point the store's sealer at `new_key` (old keys still open what they sealed) and
    return the store to `reseal`. Refused, before any change, if encryption is off."""
    if not isinstance(store, EncryptedStore):
        raise ConfigurationError(
            "This store is not encrypted: open it with encryption_key= (or "
            "Settings.encryption_key_file) first; rotate_key(key) then seals the records "
            "written before encryption was on."
        )
    if rewritable(store.inner) is None:
        raise ConfigurationError(_NO_REWRITE.format(type(store.inner).__name__))
    new = as_key_provider(new_key)
    new()  # a malformed key fails here, before anything changes
    store.sealer.provider = _Rotating(new, store.sealer.provider)
    return store


def as_key_provider(key: bytes | KeyProvider | Callable[[], bytes]) -> KeyProvider:
    """Raw bytes become a one-key `Keyring`; a callable without `lookup` is wrapped."""
    if isinstance(key, (bytes, bytearray)):
        return Keyring(bytes(key))
    if isinstance(key, KeyProvider):
        return key
    if callable(key):
        return _CallableProvider(key)
    raise InvalidInput(
        f"encryption_key must be bytes or a key provider (a callable returning the current "
        f"key, with lookup(key_id)), got {type(key).__name__}."
    )


def load_key_file(path: str | os.PathLike[str]) -> Keyring:
    """A key file holds one key per line, base64 (standard or url-safe) or hex; the
    first line is the current key, the others are older keys still needed to open
    records sealed before a rotation."""
    p = Path(path).expanduser()
    try:
        lines = [ln.strip() for ln in p.read_text("ascii").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"Cannot read the encryption key file {p}: {exc}. Pass a readable file with one "
            "base64 key per line (`pertinent encryption keygen` writes one)."
        ) from exc
    if not lines:
        raise ConfigurationError(f"The encryption key file {p} is empty; put a key in it.")
    keys = []
    for n, line in enumerate(lines, 1):
        key = _decode_key_text(line)
        if key is None:
            raise ConfigurationError(
                f"Line {n} of {p} is not a 16, 24 or 32-byte key in base64 or hex."
            )
        keys.append(key)
    return Keyring(keys[0], *keys[1:])


def _decode_key_text(text: str) -> bytes | None:
    decoders: list[Callable[[str], bytes]] = [
        bytes.fromhex,
        lambda t: base64.urlsafe_b64decode(t + "=" * (-len(t) % 4)),
        lambda t: base64.b64decode(t, validate=True),
    ]
    for decode in decoders:
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) in _KEY_SIZES:
            return key
    return None


class Sealer:
    """Seals and opens values with AES-GCM under the provider's keys."""

    def __init__(self, provider: KeyProvider) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:
            raise MissingDependency("cryptography", "crypto") from exc
        self._aesgcm = AESGCM
        self.provider = provider
        self._ciphers: dict[bytes, Any] = {}

    @property
    def current_key_id(self) -> str:
        return key_id(_check_key(self.provider()))

    def _cipher(self, key: bytes) -> Any:
        cipher = self._ciphers.get(key)
        if cipher is None:
            cipher = self._ciphers[key] = self._aesgcm(key)
        return cipher

    def seal(self, plaintext: bytes, aad: bytes) -> str:
        key = _check_key(self.provider())
        nonce = os.urandom(_NONCE_BYTES)
        header = bytes([_VERSION]) + bytes.fromhex(key_id(key)) + nonce
        body = self._cipher(key).encrypt(nonce, plaintext, header + aad)
        return _PREFIX + base64.urlsafe_b64encode(header + body).decode("ascii")

    @staticmethod
    def is_sealed(value: object) -> bool:
        return isinstance(value, str) and value.startswith(_PREFIX)

    @staticmethod
    def key_id_of(blob: str) -> str:
        raw = _decode_blob(blob)
        return raw[1 : 1 + _KEY_ID_BYTES].hex()

    def open(self, blob: str, aad: bytes, *, what: str = "a record") -> bytes:
        from cryptography.exceptions import InvalidTag

        raw = _decode_blob(blob, what)
        kid = raw[1 : 1 + _KEY_ID_BYTES].hex()
        key = self.provider.lookup(kid)
        if key is None:
            raise DecryptionFailed(
                f"{what} was sealed with key {kid}, which the key provider does not hold "
                f"(its current key is {self.current_key_id}). Open the store with the key it "
                "was written with; after a rotation that is the new key, and while a rotation "
                "is unfinished pass Keyring(new_key, old_key). Nothing was written.",
                key_id=kid,
            )
        header, body = raw[:_HEADER], raw[_HEADER:]
        try:
            out: bytes = self._cipher(key).decrypt(header[1 + _KEY_ID_BYTES :], body, header + aad)
        except InvalidTag as exc:
            raise DecryptionFailed(
                f"{what} failed authentication under key {kid}: its ciphertext was modified, "
                "or it was copied from another record or user. It cannot be read; restore the "
                "store from a backup or delete the record (forget_user). Nothing was written.",
                key_id=kid,
            ) from exc
        return out


def _decode_blob(blob: str, what: str = "a record") -> bytes:
    try:
        raw = base64.urlsafe_b64decode(blob[len(_PREFIX) :].encode("ascii"))
    except (ValueError, binascii.Error) as exc:
        raise DecryptionFailed(
            f"{what} is not a readable sealed value (bad encoding): it was modified on disk. "
            "Restore the store from a backup or delete the record."
        ) from exc
    if len(raw) < _HEADER + 16 or raw[0] != _VERSION:
        raise DecryptionFailed(
            f"{what} is not a sealed value this version of pertinent can read (version "
            f"{raw[0] if raw else None}); upgrade pertinent or restore the store from a backup."
        )
    return raw


def _aad(kind: str, record_id: str, user_id: str) -> bytes:
    return "\x00".join(("pertinent", kind, record_id, user_id)).encode("utf-8")


def _vec_to_text(vector: Vector) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _vec_from_text(text: str) -> Vector:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


@dataclass(frozen=True)
class RotationReport:
    """What `rotate_key` re-sealed, per kind of record, and under which key. `resealed`
    counts records that were sealed with another key (or not at all); a repeat call
    finds none."""

    key_id: str
    resealed: Mapping[str, int]
    already_current: Mapping[str, int]
    users: int

    @property
    def total(self) -> int:
        return sum(self.resealed.values())


@runtime_checkable
class RewritableStore(Protocol):
    """What key rotation (and re-embedding) needs beyond `Store`: every user-owned row,
    and rewriting rows in place by id. LanceDB and Weaviate implement it."""

    def chunk_owners(self) -> list[str]: ...

    def owned_chunks(self, user_id: str) -> list[Chunk]: ...

    def read_user_turns(self, user_id: str) -> list[StoredTurn]: ...

    def rewrite_events(self, events: Sequence[StoredEvent]) -> int: ...

    def rewrite_turns(self, turns: Sequence[StoredTurn]) -> int: ...

    def drop_old_versions(self) -> None: ...


def rewritable(store: object) -> RewritableStore | None:
    """The store, or the store a wrapper (circuit breaker, encryption) delegates to,
    that can rewrite rows; None if there is none."""
    for _ in range(5):
        if store is None:
            return None
        # An EncryptedStore delegates unknown attributes, so it would pass the check
        # itself; rows must be rewritten on the raw store, below the sealing.
        if not isinstance(store, EncryptedStore) and isinstance(store, RewritableStore):
            return store
        store = getattr(store, "inner", None)
    return None


class EncryptedStore:
    """A `Store` that seals user-owned records on the way in and opens them on the way
    out. Shared chunks pass through untouched (they must stay searchable).

    `seal_owned_chunks=False` keeps user-owned chunks (memories) in the clear so BM25
    still finds them; events and turns are sealed either way.
    """

    def __init__(self, inner: Store, sealer: Sealer, *, seal_owned_chunks: bool = True) -> None:
        self.inner = inner
        self.sealer = sealer
        self.seal_owned_chunks = seal_owned_chunks
        # Stands in for a sealed vector: any fixed unit vector says nothing, and a unit
        # vector is valid under every distance a backend may index events with.
        self._blank = np.zeros(inner.dim, dtype=np.float32)
        self._blank[0] = 1.0

    def __getattr__(self, name: str) -> Any:
        # Backend-specific extras (path, optimize, …) stay reachable.
        return getattr(self.inner, name)

    # ------------------------------------------------------------------ sealing

    def seal_event(self, e: StoredEvent) -> StoredEvent:
        payload = {"t": e.text, "i": e.item_id, "v": _vec_to_text(e.vector)}
        blob = self.sealer.seal(_dumps(payload), _aad("event", e.id, e.user_id))
        return replace(e, text=blob, item_id=None, vector=self._blank)

    def open_event(self, e: StoredEvent) -> StoredEvent:
        if not Sealer.is_sealed(e.text):
            return e  # written before encryption was turned on; rotate_key seals it
        assert e.text is not None
        what = f"Event {e.id!r} of user {e.user_id!r}"
        p = _loads(self.sealer.open(e.text, _aad("event", e.id, e.user_id), what=what), what)
        return replace(e, text=p["t"], item_id=p["i"], vector=_vec_from_text(p["v"]))

    def seal_turn(self, t: StoredTurn) -> StoredTurn:
        payload = {"t": t.text, "v": _vec_to_text(t.vector)}
        blob = self.sealer.seal(_dumps(payload), _aad("turn", t.id, t.user_id))
        return replace(t, text=blob, vector=self._blank)

    def open_turn(self, t: StoredTurn) -> StoredTurn:
        if not Sealer.is_sealed(t.text):
            return t
        what = f"Turn {t.id!r} of user {t.user_id!r}"
        p = _loads(self.sealer.open(t.text, _aad("turn", t.id, t.user_id), what=what), what)
        return replace(t, text=p["t"], vector=_vec_from_text(p["v"]))

    def seal_chunk(self, c: Chunk) -> Chunk:
        if c.owner is None or not self.seal_owned_chunks:
            return c
        payload = {"t": c.text, "ti": c.title, "s": c.source, "m": dict(c.metadata)}
        blob = self.sealer.seal(_dumps(payload), _aad("chunk", c.id, c.owner))
        return replace(c, text=blob, title=None, source=None, metadata={})

    def open_chunk(self, c: Chunk) -> Chunk:
        if c.owner is None or not Sealer.is_sealed(c.text):
            return c
        what = f"Chunk {c.id!r} of user {c.owner!r}"
        p = _loads(self.sealer.open(c.text, _aad("chunk", c.id, c.owner), what=what), what)
        return replace(c, text=p["t"], title=p["ti"], source=p["s"], metadata=p["m"])

    def _open_hits(self, hits: Iterable[Hit]) -> list[Hit]:
        return [
            replace(h, chunk=self.open_chunk(h.chunk)) if h.chunk.owner is not None else h
            for h in hits
        ]

    # ------------------------------------------------------------------ Store

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def upsert_chunks(self, chunks: Sequence[Chunk]) -> int:
        return self.inner.upsert_chunks([self.seal_chunk(c) for c in chunks])

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        return self.inner.delete_documents(doc_ids)

    def get_chunks(self, ids: Sequence[str], *, user_id: str | None = None) -> list[Chunk]:
        return [self.open_chunk(c) for c in self.inner.get_chunks(ids, user_id=user_id)]

    def get_vectors(self, ids: Sequence[str], *, user_id: str | None = None) -> dict[str, Vector]:
        # `seal_chunk` seals text, title, source and metadata, never the vector (owned
        # chunks stay vector-searchable), so the inner store's vectors are the real ones.
        return self.inner.get_vectors(ids, user_id=user_id)

    def count_chunks(self) -> int:
        return self.inner.count_chunks()

    def document_ids(self) -> list[str]:
        return self.inner.document_ids()

    def hybrid_search(
        self, text: str, vector: Vector, *, k: int, alpha: float, where: SearchFilter
    ) -> list[Hit]:
        return self._open_hits(
            self.inner.hybrid_search(text, vector, k=k, alpha=alpha, where=where)
        )

    def vector_search(self, vector: Vector, *, k: int, where: SearchFilter) -> list[Hit]:
        return self._open_hits(self.inner.vector_search(vector, k=k, where=where))

    def keyword_search(self, text: str, *, k: int, where: SearchFilter) -> list[Hit]:
        return self._open_hits(self.inner.keyword_search(text, k=k, where=where))

    def append_events(self, events: Sequence[StoredEvent]) -> None:
        self.inner.append_events([self.seal_event(e) for e in events])

    def read_events(self, user_id: str) -> list[StoredEvent]:
        return [self.open_event(e) for e in self.inner.read_events(user_id)]

    def read_event_arrays(self, user_id: str) -> EventArrays:
        # Sealed events keep their vector inside the sealed text: open them one by one.
        return event_arrays(self.read_events(user_id), self.inner.dim)

    def append_turns(self, turns: Sequence[StoredTurn]) -> None:
        self.inner.append_turns([self.seal_turn(t) for t in turns])

    def read_turns(self, user_id: str, session_id: str) -> list[StoredTurn]:
        return [self.open_turn(t) for t in self.inner.read_turns(user_id, session_id)]

    def known_users(self) -> list[str]:
        return self.inner.known_users()

    def purge_before(self, log: str, cutoff: datetime) -> int:
        return self.inner.purge_before(log, cutoff)

    def get_user_settings(self, user_id: str) -> dict[str, Any] | None:
        return self.inner.get_user_settings(user_id)

    def put_user_settings(self, user_id: str, settings: Mapping[str, Any]) -> None:
        self.inner.put_user_settings(user_id, settings)

    def delete_user(self, user_id: str) -> Mapping[str, int]:
        return self.inner.delete_user(user_id)

    def close(self) -> None:
        self.inner.close()

    # ------------------------------------------------------------------ rotation

    def reseal(self, user_ids: Sequence[str] | None = None) -> RotationReport:
        """Re-seal every user-owned record not sealed with the current key (records
        written before encryption was on included), then re-seal the store's key check.

        Per user, every record is opened before any is rewritten, so a record that
        cannot be opened stops the rotation with `DecryptionFailed` and nothing of
        that user changes. Users already done stay done: run it again to resume.
        """
        store = rewritable(self.inner)
        if store is None:
            raise ConfigurationError(_NO_REWRITE.format(type(self.inner).__name__))
        current = self.sealer.current_key_id
        resealed = {"events": 0, "turns": 0, "owned_chunks": 0}
        current_n = dict.fromkeys(resealed, 0)
        users = (
            sorted(set(store.chunk_owners()) | set(self.inner.known_users()))
            if user_ids is None
            else list(user_ids)
        )

        def stale(value: str | None) -> bool:
            return not (Sealer.is_sealed(value) and Sealer.key_id_of(value or "") == current)

        for user in users:
            events = self.inner.read_events(user)
            turns = store.read_user_turns(user)
            chunks = store.owned_chunks(user) if self.seal_owned_chunks else []
            new_events = [self.seal_event(self.open_event(e)) for e in events if stale(e.text)]
            new_turns = [self.seal_turn(self.open_turn(t)) for t in turns if stale(t.text)]
            stale_docs = {c.doc_id for c in chunks if stale(c.text)}
            new_chunks = [
                self.seal_chunk(self.open_chunk(c)) for c in chunks if c.doc_id in stale_docs
            ]
            if new_events:
                store.rewrite_events(new_events)
            if new_turns:
                store.rewrite_turns(new_turns)
            if new_chunks:
                self.inner.upsert_chunks(new_chunks)
            n_chunks = sum(1 for c in chunks if stale(c.text))
            resealed["events"] += len(new_events)
            resealed["turns"] += len(new_turns)
            resealed["owned_chunks"] += n_chunks
            current_n["events"] += len(events) - len(new_events)
            current_n["turns"] += len(turns) - len(new_turns)
            current_n["owned_chunks"] += len(chunks) - n_chunks
        if user_ids is None:
            write_canary(self.inner, self.sealer)
            # Old row versions hold ciphertext under the retired key (or plaintext).
            store.drop_old_versions()
        return RotationReport(
            key_id=current, resealed=resealed, already_current=current_n, users=len(users)
        )


def _dumps(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _loads(raw: bytes, what: str) -> dict[str, Any]:
    try:
        out = json.loads(raw)
    except ValueError as exc:  # authenticated, so only a foreign writer gets here
        raise DecryptionFailed(f"{what} opened but is not a pertinent record.") from exc
    if not isinstance(out, dict):
        raise DecryptionFailed(f"{what} opened but is not a pertinent record.")
    return out


# ---------------------------------------------------------------------- key check


def write_canary(store: Store, sealer: Sealer) -> None:
    """Record which key the store is written with, as a sealed value only that key opens."""
    blob = sealer.seal(_CANARY, _aad("canary", CANARY_USER, CANARY_USER))
    store.put_user_settings(CANARY_USER, {"canary": blob, "key_id": sealer.current_key_id})


def check_store_key(store: Store, sealer: Sealer | None) -> None:
    """At open: refuse a key that cannot open the store's records, before anything is
    written with it (a wrong key would otherwise seal new records that the right key
    cannot open). A new store records the key; `sealer=None` on a store that was
    written with encryption is refused too, so sealed text never reaches a prompt."""
    found = store.get_user_settings(CANARY_USER)
    blob = (found or {}).get("canary")
    if sealer is None:
        if blob:
            raise DecryptionFailed(
                f"This store is encrypted (key {(found or {}).get('key_id')}); open it with "
                "encryption_key= (or Settings.encryption_key_file).",
                key_id=(found or {}).get("key_id"),
            )
        return
    if not blob:
        write_canary(store, sealer)
        return
    sealer.open(str(blob), _aad("canary", CANARY_USER, CANARY_USER), what="The store's key check")


def encrypt_store(
    store: Store, settings: Any, key: bytes | KeyProvider | Callable[[], bytes] | None
) -> Store:
    """What `pertinent.open` does with `encryption_key` (or the settings' key file): check
    the key against the store, then wrap the store. Closes the store if the key is
    refused, so a failed open leaves no writer threads behind."""
    if key is None and settings.encryption_key_file is not None:
        key = load_key_file(settings.encryption_key_file)
    sealer = Sealer(as_key_provider(key)) if key is not None else None
    try:
        if sealer is not None or settings.backend == "lancedb":
            check_store_key(store, sealer)
    except BaseException:
        store.close()
        raise
    if sealer is None:
        return store
    return EncryptedStore(store, sealer, seal_owned_chunks=settings.encrypt_owned_chunks)
