"""Embedding versions: a registry of the embedding models a store has been built with,
re-embedding into a new version side by side, and an atomic switch (and switch back).

    report = px.reembed(new_embedder)   # builds version v2 beside v1, then switches to it
    px.rollback()                       # back to v1, exactly as it was

Where versions live is a `VersionHome`. On disk (LanceDB, `FileHome`), version v1 is the
store directory itself and every later version is a complete store under
``versions/<id>/``; ``embedding_versions.json`` names them and which one is active, and
the switch is one `os.replace` of that file (atomic on POSIX). On a Weaviate cluster
(`WeaviateHome`), v1 is the collections under the configured prefix and version vN a
complete set under ``<prefix>V<N>``; the registry is one object (``embedding_versions``)
in ``<prefix>Meta``, and the switch replaces that one object. In the process the switch
is one assignment of the client's active version: a query reads the active version
once, when it starts, and uses that store, embedder and profile cache to the end
(`Pertinent` pins it per thread), so no query ever mixes two models' vectors.

What a new version is built from: shared chunks from their stored text (same chunk ids
and boundaries), user-owned chunks (memories) from their text, a memory turn with the
turn before it as `LongTermMemory` embeds it, events with the new vector of the item
they name (or of their text), session turns from their text, and every user's settings
(consent). Profiles and session states are folds of those logs, so they are rebuilt on
first use. Writes made while a re-embed runs go to the old version only: pause writers.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import numpy as np

from pertinent.embeddings import (
    BUNDLED_MODEL,
    CachedQueryEmbedder,
    Embedder,
    SentenceTransformerEmbedder,
)
from pertinent.errors import ConfigurationError, InvalidInput, StoreCorrupted
from pertinent.stores.base import Store, StoredEvent
from pertinent.types import Chunk

if TYPE_CHECKING:
    from pertinent.config import Settings
    from pertinent.stores.weaviate import WeaviateStore

__all__ = [
    "REGISTRY_FILE",
    "REGISTRY_KEY",
    "ActiveVersion",
    "EmbeddingVersion",
    "FileHome",
    "ReembedReport",
    "Registry",
    "VersionHome",
    "WeaviateHome",
    "active_entry",
    "build_version",
    "each_inactive_store",
    "home_for",
    "load_registry",
    "pinned",
    "pinned_client",
    "save_registry",
]

REGISTRY_FILE = "embedding_versions.json"
REGISTRY_KEY = "embedding_versions"  # the registry's record in <prefix>Meta on Weaviate


@dataclass(frozen=True)
class EmbeddingVersion:
    """One embedding model a store was built with. Where its data is: `directory`,
    relative to the store root (LanceDB), or `prefix`, its collections' name prefix
    (Weaviate). `model` is how pertinent loads the model by itself (a
    sentence-transformers name or path), None for an embedder only the caller can build."""

    id: str
    model_id: str
    dim: int
    directory: str | None
    model: str | None
    created: str
    prefix: str | None = None

    def path(self, root: str | os.PathLike[str]) -> Path:
        if self.directory is None:
            raise ConfigurationError(
                f"Embedding version {self.id} lives in Weaviate collections ({self.prefix}*), "
                "not in a directory; open the store with backend='weaviate'."
            )
        return Path(root) / self.directory


@dataclass(frozen=True)
class Registry:
    active: str
    previous: str | None
    versions: tuple[EmbeddingVersion, ...]

    def get(self, version_id: str) -> EmbeddingVersion:
        for v in self.versions:
            if v.id == version_id:
                return v
        raise InvalidInput(
            f"No embedding version {version_id!r}; the store has {[v.id for v in self.versions]}."
        )

    @property
    def active_version(self) -> EmbeddingVersion:
        return self.get(self.active)


@dataclass(frozen=True)
class ReembedReport:
    """What `reembed` built: the new version, the one it replaced, and counts. Events
    whose item is gone and that carry no text cannot be re-embedded: `dropped_events`."""

    version: str
    model_id: str
    previous: str
    shared_chunks: int
    owned_chunks: int
    events: int
    turns: int
    users: int
    dropped_events: int


@dataclass
class ActiveVersion:
    """What one query uses from start to end: the store, the embedder and the profile
    and session caches of one embedding version (states of two models never mix)."""

    id: str | None
    store: Store
    embedder: Embedder
    profiles: dict[str, Any] = field(default_factory=dict)
    sessions: dict[Any, Any] = field(default_factory=dict)


class VersionPin:
    """The active version, and the one each thread pinned for the call it is in."""

    def __init__(self) -> None:
        self.local = threading.local()

    def current(self, active: ActiveVersion) -> ActiveVersion:
        pinned: ActiveVersion | None = getattr(self.local, "version", None)
        return pinned if pinned is not None else active

    def pin(self, active: Callable[[], ActiveVersion]) -> _Pinned:
        return _Pinned(self.local, active)


class _Pinned:
    def __init__(self, local: threading.local, active: Callable[[], ActiveVersion]) -> None:
        self._local = local
        self._active = active
        self._outer = False

    def __enter__(self) -> None:
        if getattr(self._local, "version", None) is None:
            self._local.version = self._active()
            self._outer = True

    def __exit__(self, *exc: object) -> None:
        if self._outer:
            self._local.version = None


# ---------------------------------------------------------------------- registry


def _registry_json(registry: Registry) -> str:
    """The registry as JSON; a version's unused location field (`directory` on Weaviate,
    `prefix` on disk) is left out."""
    versions = [
        {k: v for k, v in version.__dict__.items() if v is not None or k == "model"}
        for version in registry.versions
    ]
    body = {"active": registry.active, "previous": registry.previous, "versions": versions}
    return json.dumps(body, indent=2, sort_keys=True)


def _registry_from(raw: Any) -> Registry:
    versions = []
    for v in raw["versions"]:
        v = dict(v)
        v.setdefault("directory", None)
        versions.append(EmbeddingVersion(**v))
    registry = Registry(
        active=raw["active"], previous=raw.get("previous"), versions=tuple(versions)
    )
    registry.active_version  # noqa: B018 - the active id must name a version
    return registry


class VersionHome(Protocol):
    """Where a store keeps its embedding versions: the registry, and each version's data.
    `FileHome` (LanceDB) and `WeaviateHome` implement it; the rest of this module and
    `Pertinent` only talk to this."""

    def load(self) -> Registry | None:
        """The registry; None if the store was never re-embedded."""
        ...

    def save(self, registry: Registry) -> None:
        """Replace the registry in one atomic write (readers see old or new)."""
        ...

    def place(self, number: int) -> dict[str, str]:
        """Where version v<number> keeps its data (`directory=` or `prefix=`)."""
        ...

    def exists(self, version: EmbeddingVersion) -> bool: ...

    def open_store(self, version: EmbeddingVersion) -> Store:
        """The raw store of an existing version."""
        ...

    def create_store(self, version: EmbeddingVersion) -> Store:
        """An empty raw store for a version being built (what a crashed build left at
        its place is removed first)."""
        ...

    def discard(self, version: EmbeddingVersion) -> None:
        """Delete the data of a version whose build failed (never a registered one)."""
        ...

    def close(self) -> None: ...


class FileHome:
    """Versions of an embedded LanceDB store: directories under its root, and the
    registry file `embedding_versions.json` there."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def load(self) -> Registry | None:
        path = self.root / REGISTRY_FILE
        try:
            return _registry_from(json.loads(path.read_text("utf-8")))
        except (FileNotFoundError, NotADirectoryError):
            return None  # never re-embedded (or not a store: opening the store says so)
        except (OSError, ValueError, KeyError, TypeError, InvalidInput) as exc:
            raise StoreCorrupted(
                f"{path} cannot be read as pertinent's embedding-version registry: {exc}. "
                "Restore it from a backup; its versions are the directories under versions/."
            ) from exc

    def save(self, registry: Registry) -> None:
        """Write a temporary file, fsync it, then `os.replace`: readers see the old
        registry or the new one, never half of one."""
        path = self.root / REGISTRY_FILE
        tmp = path.with_suffix(".json.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write(_registry_json(registry))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def place(self, number: int) -> dict[str, str]:
        return {"directory": "." if number == 1 else f"versions/v{number}"}

    def exists(self, version: EmbeddingVersion) -> bool:
        return version.path(self.root).is_dir()

    def open_store(self, version: EmbeddingVersion) -> Store:
        from pertinent.stores.lancedb import LanceDBStore

        return LanceDBStore(version.path(self.root), model_id=version.model_id, dim=version.dim)

    def create_store(self, version: EmbeddingVersion) -> Store:
        if self.exists(version):  # a re-embed that crashed before registering it
            shutil.rmtree(version.path(self.root))
        return self.open_store(version)

    def discard(self, version: EmbeddingVersion) -> None:
        shutil.rmtree(version.path(self.root), ignore_errors=True)

    def close(self) -> None:
        return None


_OWNER_KEY = "version_of"  # in a version's <prefix>Meta: the base prefix it belongs to


class WeaviateHome:
    """Versions of a Weaviate store: v1 is the collections under the base `prefix`,
    version vN a complete set under ``<prefix>V<N>``. The registry is the one object
    ``embedding_versions`` in ``<prefix>Meta`` (the same JSON as the LanceDB file, with
    `prefix` in place of `directory`), replaced whole on every change. One connection,
    opened on first use, serves the registry and collection management."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        api_key: str | None = None,
        grpc_port: int = 50051,
        timeout_s: float = 30.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._api_key = api_key
        self._grpc_port = grpc_port
        self._timeout_s = timeout_s
        self._meta: WeaviateStore | None = None
        self._lock = threading.Lock()

    def _connection(self) -> WeaviateStore:
        with self._lock:
            if self._meta is None:
                from pertinent.stores.weaviate import open_meta

                self._meta = open_meta(
                    self.url,
                    prefix=self.prefix,
                    api_key=self._api_key,
                    grpc_port=self._grpc_port,
                    timeout_s=self._timeout_s,
                )
            return self._meta

    def _where(self) -> str:
        return f"{self.prefix}Meta at {self.url}"

    def load(self) -> Registry | None:
        text = self._connection().read_meta(REGISTRY_KEY)
        if text is None:
            return None
        try:
            return _registry_from(json.loads(text))
        except (ValueError, KeyError, TypeError, InvalidInput) as exc:
            raise StoreCorrupted(
                f"The embedding-version registry in {self._where()} cannot be read: {exc}. "
                f"Restore the {REGISTRY_KEY!r} object from a backup; the versions are the "
                f"collection sets {self.prefix}* and {self.prefix}V<n>*."
            ) from exc

    def save(self, registry: Registry) -> None:
        self._connection().write_meta(REGISTRY_KEY, _registry_json(registry))

    def place(self, number: int) -> dict[str, str]:
        if number == 1:
            return {"prefix": self.prefix}
        prefix = f"{self.prefix}V{number}"
        if len(prefix) > 41:
            raise ConfigurationError(
                f"The collection prefix {self.prefix!r} is too long to derive version prefixes "
                f"({prefix!r} exceeds 41 characters); use a prefix of at most 38 characters."
            )
        return {"prefix": prefix}

    def _prefix(self, version: EmbeddingVersion) -> str:
        if version.prefix is None:
            raise StoreCorrupted(
                f"Embedding version {version.id} in {self._where()} names no collection prefix; "
                f"restore the {REGISTRY_KEY!r} object from a backup."
            )
        return version.prefix

    def exists(self, version: EmbeddingVersion) -> bool:
        return self._connection().collections_exist(prefix=self._prefix(version))

    def open_store(self, version: EmbeddingVersion) -> Store:
        from pertinent.stores.weaviate import WeaviateStore

        return WeaviateStore(
            self.url,
            model_id=version.model_id,
            dim=version.dim,
            api_key=self._api_key,
            grpc_port=self._grpc_port,
            timeout_s=self._timeout_s,
            prefix=self._prefix(version),
        )

    def create_store(self, version: EmbeddingVersion) -> Store:
        """Collections left by a crashed build of this version are dropped first, but
        only if their `version_of` record names this store: collections of another
        store that happens to use the derived prefix are never touched."""
        prefix = self._prefix(version)
        if prefix == self.prefix:
            raise ConfigurationError("Version v1 is the store itself; it is never rebuilt.")
        meta = self._connection()
        if meta.collections_exist(prefix=prefix):
            owner = meta.read_meta(_OWNER_KEY, prefix=prefix)
            if owner != self.prefix:
                raise ConfigurationError(
                    f"Weaviate at {self.url} already has collections {prefix}*, which are not "
                    f"a version of the store {self.prefix}*; drop them or use another "
                    "collection prefix for this store."
                )
            meta.drop_collections(prefix=prefix)
        store = self.open_store(version)
        meta.write_meta(_OWNER_KEY, self.prefix, prefix=prefix)
        return store

    def discard(self, version: EmbeddingVersion) -> None:
        prefix = self._prefix(version)
        if prefix != self.prefix:
            self._connection().drop_collections(prefix=prefix)

    def close(self) -> None:
        with self._lock:
            meta, self._meta = self._meta, None
        if meta is not None:
            meta.close()


def home_for(settings: Settings) -> VersionHome:
    """The version home of the store `settings` describe (its backend)."""
    if settings.backend == "weaviate":
        key = settings.weaviate_api_key.get_secret_value() if settings.weaviate_api_key else None
        return WeaviateHome(
            settings.weaviate_url,
            prefix=settings.weaviate_collection_prefix,
            api_key=key or None,
            grpc_port=settings.weaviate_grpc_port,
            timeout_s=settings.weaviate_timeout_s,
        )
    return FileHome(settings.path)


def _home(root: str | os.PathLike[str] | VersionHome) -> VersionHome:
    """A store root (a path: the LanceDB layout) or a `VersionHome` as a home."""
    return FileHome(root) if isinstance(root, str | os.PathLike) else root


def load_registry(root: str | os.PathLike[str] | VersionHome) -> Registry | None:
    return _home(root).load()


def save_registry(root: str | os.PathLike[str] | VersionHome, registry: Registry) -> None:
    _home(root).save(registry)


def active_entry(root: str | os.PathLike[str] | VersionHome) -> EmbeddingVersion | None:
    """The active version of the store at `root`; None when it was never re-embedded."""
    registry = load_registry(root)
    return registry.active_version if registry is not None else None


def model_spec(embedder: Embedder) -> str | None:
    """How `open` can load this embedder again by itself: the bundled model by name;
    another model only if the caller says (``reembed(..., model=path)``)."""
    inner = embedder.inner if isinstance(embedder, CachedQueryEmbedder) else embedder
    if isinstance(inner, SentenceTransformerEmbedder):
        name = inner.model_id.rsplit("@", 1)[0]
        return name if name == BUNDLED_MODEL else None
    return None


def _initial(embedder: Embedder, home: VersionHome | None = None) -> Registry:
    place = (home or FileHome(".")).place(1)
    v1 = EmbeddingVersion(
        id="v1",
        model_id=embedder.model_id,
        dim=embedder.dim,
        directory=place.get("directory"),
        model=model_spec(embedder),
        created=datetime.now(timezone.utc).isoformat(),
        prefix=place.get("prefix"),
    )
    return Registry(active="v1", previous=None, versions=(v1,))


def open_version_store(
    root: str | os.PathLike[str] | VersionHome, version: EmbeddingVersion
) -> Store:
    return _home(root).open_store(version)


def each_inactive_store(
    root: str | os.PathLike[str] | VersionHome, active_id: str | None
) -> Iterator[Store]:
    """Every registered version but the active one, opened in turn (and closed): what
    forgetting, retention and key rotation must reach too."""
    home = _home(root)
    registry = home.load()
    if registry is None:
        return
    for v in registry.versions:
        if v.id == (active_id or registry.active) or not home.exists(v):
            continue
        store = home.open_store(v)
        try:
            yield store
        finally:
            store.close()


# ---------------------------------------------------------------------- re-embedding


def _whole_documents(chunks: Sequence[Chunk], size: int) -> Iterator[list[Chunk]]:
    """Batches of whole documents: `upsert_chunks` replaces every chunk of the documents
    it is given, so a document split across two calls would lose its first part."""
    by_doc: dict[str, list[Chunk]] = defaultdict(list)
    for c in chunks:
        by_doc[c.doc_id].append(c)
    batch: list[Chunk] = []
    for doc_id in sorted(by_doc):
        batch.extend(sorted(by_doc[doc_id], key=lambda c: c.position))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _embed_chunks(chunks: Sequence[Chunk], texts: Sequence[str], embedder: Embedder) -> list[Chunk]:
    vectors = embedder.embed_documents(list(texts))
    return [
        replace(c, model_id=embedder.model_id, vector=np.asarray(vectors[i], dtype=np.float32))
        for i, c in enumerate(chunks)
    ]


def _memory_texts(chunks: Sequence[Chunk]) -> list[str]:
    """What `LongTermMemory` embedded: a turn's first chunk with the previous turn's text
    after it, later chunks with the chunk before them."""
    by_doc: dict[str, list[Chunk]] = defaultdict(list)
    for c in chunks:
        by_doc[c.doc_id].append(c)
    full = {
        d: "".join(c.text for c in sorted(cs, key=lambda c: c.position)) for d, cs in by_doc.items()
    }
    texts = []
    for c in chunks:
        context: str | None = None
        if c.metadata.get("kind") == "turn":
            if c.position == 0:
                context = full.get(str(c.metadata.get("prev") or ""))
            else:
                prev = [p for p in by_doc[c.doc_id] if p.position == c.position - 1]
                context = prev[0].text if prev else None
        texts.append(f"{c.text}\n{context}" if context else c.text)
    return texts


def build_version(
    root: Path | VersionHome,
    old: ActiveVersion,
    embedder: Embedder,
    *,
    wrap: Callable[[Store], Store],
    opener: Any,
    model: str | None = None,
    batch_size: int = 256,
) -> tuple[Registry, ActiveVersion, ReembedReport]:
    """Build a complete store for `embedder` beside the active one and register it
    (not active yet). `wrap` puts the new raw store behind the same encryption as the
    old one; `opener` opens the old store's sealed records (None: not encrypted)."""
    from pertinent.privacy.encryption import CANARY_USER, rewritable

    raw = rewritable(old.store)
    if raw is None:
        raise ConfigurationError(
            f"Re-embedding needs a store that lists every row ({type(old.store).__name__} "
            "does not); the LanceDB and Weaviate stores do (without a degraded-mode replica)."
        )
    home = _home(root)
    registry = home.load() or _initial(old.embedder, home)
    current = registry.active_version
    if embedder.model_id == current.model_id:
        raise InvalidInput(
            f"{embedder.model_id!r} is already the active embedding model; pass another model."
        )
    number = 1 + max(int(v.id[1:]) for v in registry.versions if v.id[1:].isdigit())
    place = home.place(number)
    version = EmbeddingVersion(
        id=f"v{number}",
        model_id=embedder.model_id,
        dim=embedder.dim,
        directory=place.get("directory"),
        model=model or model_spec(embedder),
        created=datetime.now(timezone.utc).isoformat(),
        prefix=place.get("prefix"),
    )
    new_store = wrap(home.create_store(version))
    unseal_chunk = opener.open_chunk if opener is not None else (lambda c: c)
    unseal_turn = opener.open_turn if opener is not None else (lambda t: t)
    try:
        shared = raw.shared_chunks()  # type: ignore[attr-defined]
        for batch in _whole_documents(shared, batch_size):
            new_store.upsert_chunks(_embed_chunks(batch, [c.text for c in batch], embedder))
        owners = raw.chunk_owners()
        n_owned = 0
        for owner in owners:
            owned = [unseal_chunk(c) for c in raw.owned_chunks(owner)]
            for batch in _whole_documents(owned, batch_size):
                texts = _memory_texts_for(batch, owned)
                new_store.upsert_chunks(_embed_chunks(batch, texts, embedder))
            n_owned += len(owned)
        users = sorted(set(owners) | set(old.store.known_users()))
        n_events = n_turns = dropped = 0
        for user in users:
            events = old.store.read_events(user)
            items = {
                c.id: c
                for c in new_store.get_chunks(
                    sorted({e.item_id for e in events if e.item_id}), user_id=user
                )
            }
            texts = sorted({e.text for e in events if e.text and e.item_id not in items})
            text_vecs = dict(zip(texts, embedder.embed_documents(texts), strict=True))
            moved: list[StoredEvent] = []
            for e in events:
                item = items.get(e.item_id) if e.item_id else None
                vec = item.vector if item is not None else text_vecs.get(e.text or "")
                if vec is None:
                    dropped += 1
                    continue
                moved.append(
                    replace(e, model_id=embedder.model_id, vector=np.asarray(vec, np.float32))
                )
            new_store.append_events(moved)
            n_events += len(moved)
            turns = [unseal_turn(t) for t in raw.read_user_turns(user)]
            if turns:
                vecs = embedder.embed_documents([t.text for t in turns])
                new_store.append_turns(
                    [
                        replace(t, model_id=embedder.model_id, vector=vecs[i])
                        for i, t in enumerate(turns)
                    ]
                )
            n_turns += len(turns)
        for user in [*raw.user_settings_ids()]:  # type: ignore[attr-defined]
            found = old.store.get_user_settings(user)
            if found is not None:
                target_store = getattr(new_store, "inner", new_store)
                (target_store if user == CANARY_USER else new_store).put_user_settings(user, found)
    except BaseException:
        new_store.close()
        home.discard(version)
        raise
    registry = Registry(
        active=registry.active,
        previous=registry.previous,
        versions=(*registry.versions, version),
    )
    home.save(registry)  # registered before the switch: forget reaches it
    report = ReembedReport(
        version=version.id,
        model_id=version.model_id,
        previous=current.id,
        shared_chunks=len(shared),
        owned_chunks=n_owned,
        events=n_events,
        turns=n_turns,
        users=len(users),
        dropped_events=dropped,
    )
    return registry, ActiveVersion(id=version.id, store=new_store, embedder=embedder), report


def _memory_texts_for(batch: Sequence[Chunk], owned: Sequence[Chunk]) -> list[str]:
    """`_memory_texts` over all the owner's chunks (the previous turn may sit in another
    batch), returned for `batch` only."""
    texts = dict(zip([c.id for c in owned], _memory_texts(owned), strict=True))
    return [texts[c.id] for c in batch]


def switch(root: Path | VersionHome, registry: Registry, to: str) -> Registry:
    """Make version `to` active in the registry (one atomic write); the old active
    becomes `previous`, so `rollback` returns to it."""
    registry.get(to)
    new = Registry(active=to, previous=registry.active, versions=registry.versions)
    _home(root).save(new)
    return new


F = TypeVar("F", bound=Callable[..., Any])


def pinned(method: F) -> F:
    """Run a `Pertinent` method with the active version pinned for this thread: every
    `self.store` / `self.embedder` / cache read inside it sees one version, even if
    `reembed` or `rollback` switches versions meanwhile (nested calls keep the pin)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._pin.pin(lambda: self._active):
            return method(self, *args, **kwargs)

    return cast(F, wrapper)


def pinned_client(method: F) -> F:
    """`pinned` for objects that hold a `Pertinent` as `self.px` (LongTermMemory): the
    memory search embeds the query and searches the store within one version."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        px = self.px
        with px._pin.pin(lambda: px._active):
            return method(self, *args, **kwargs)

    return cast(F, wrapper)
