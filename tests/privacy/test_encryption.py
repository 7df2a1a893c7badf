"""Encryption at rest, on a real LanceDB store (and Weaviate through the in-process fake):
what reaches the disk, wrong keys, tampering, rotation and resuming it."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS
from fake_weaviate import FakeWeaviate

import pertinent
from pertinent import Event, LongTermMemory, MemoryTurn
from pertinent.privacy.encryption import EncryptedStore, Keyring, Sealer, key_id, rewritable
from pertinent.stores.lancedb import LanceDBStore
from pertinent.stores.weaviate import WeaviateStore

KEY = bytes(range(32))
KEY2 = bytes(range(100, 132))
MARKER = "qzxmarker8213"


def _open(path: Path, embedder: pertinent.Embedder, key: object = None) -> pertinent.Pertinent:
    return pertinent.open(path, embedder=embedder, encryption_key=key)  # type: ignore[arg-type]


def _write_user(px: pertinent.Pertinent, user: str = "zoe") -> list[bytes]:
    """Write one user's records of every kind, each holding MARKER; returns the float32
    bytes of the vectors that are sealed (events, turns) when encryption is on."""
    if px.store.count_chunks() == 0:
        px.ingest(CORPUS, show_progress=False)
    shared = px.search("Rust borrow checker")[0]
    px.ingest(
        {"id": f"{user}-note", "text": f"{MARKER} private diary of {user}"},
        owner=user,
        show_progress=False,
    )
    px.record(user, Event(kind="query", text=f"where did I put {MARKER}"))
    px.record(user, Event(kind="open", item_id=shared.id))
    px.add_turn(user, "s", "user", f"remember {MARKER} for me")
    LongTermMemory(px).add_conversation(
        user, [MemoryTurn(text=f"my locker code is {MARKER}", turn_id="t1")], session_id="m"
    )
    vectors = [e.vector for e in px.store.read_events(user) if e.text]
    vectors += [t.vector for t in px.store.read_turns(user, "s")]
    return [np.asarray(v, dtype=np.float32).tobytes()[:64] for v in vectors]


def _scan(root: Path, needles: list[bytes]) -> list[str]:
    blobs = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    return [f"{p.name}:{n[:12]!r}" for p, b in blobs.items() for n in needles if n in b]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _key_id_needle(key: bytes) -> bytes:
    """The first characters of every value sealed with `key` (version + key id)."""
    head = base64.urlsafe_b64encode(bytes([1]) + bytes.fromhex(key_id(key)))
    return b"pxe1." + head


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_user_records_reach_the_disk_only_as_ciphertext(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder, encrypted: bool
) -> None:
    root = tmp_path / "store"
    with _open(root, embedder, KEY if encrypted else None) as px:
        vector_needles = _write_user(px)
        assert len(vector_needles) == 2
        found = _scan(root, [MARKER.encode(), *vector_needles])
        shared_text = b"borrow checker rejects two mutable references"
        # Shared documents stay in the clear either way: BM25 and the ANN index need them.
        assert _scan(root, [shared_text])
        if encrypted:
            assert found == []
            assert _scan(root, [_key_id_needle(KEY)])
        else:
            assert {f.split(":")[1] for f in found} == {
                repr(n[:12]) for n in [MARKER.encode(), *vector_needles]
            }
        # Round trip: every path reads the plaintext back.
        assert MARKER in px.history("zoe", "s")[0].text
        texts = {e.text for e in px.store.read_events("zoe")}
        assert f"where did I put {MARKER}" in texts
        hits = px.search(f"{MARKER} private diary", user_id="zoe", remember=False)
        note = next(r for r in hits if r.id == "zoe-note#0")
        assert MARKER in note.text
        memories = LongTermMemory(px).search("what is my locker code?", user_id="zoe")
        assert any(MARKER in m.text for m in memories)
        assert px.profile("zoe").gate > 0
        # The column-wise read behind a profile rebuild opens sealed vectors too.
        log = px.store.read_event_arrays("zoe")
        assert np.array_equal(
            log.vectors, np.stack([e.vector for e in px.store.read_events("zoe")])
        )
        assert np.all(np.abs(np.linalg.norm(log.vectors, axis=1) - 1.0) < 1e-3)
        assert not np.any(
            np.all(log.vectors == np.eye(1, px.embedder.dim, dtype=np.float32), axis=1)
        )


def test_memory_text_is_sealed_but_its_vector_stays_searchable(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    with _open(tmp_path / "store", embedder, KEY) as px:
        _write_user(px)
        assert isinstance(px.store, EncryptedStore)
        raw = px.store.inner.get_chunks(["zoe-note#0"], user_id="zoe")[0]
        assert raw.text.startswith("pxe1.") and raw.metadata == {} and raw.title is None
        assert raw.vector is not None and np.linalg.norm(raw.vector) > 0.99
        # found by meaning (the vector leg), not by keyword: BM25 sees ciphertext
        assert px.store.keyword_search(MARKER, k=5, where=pertinent.SearchFilter("zoe")) == []
        by_vector = px.store.vector_search(
            embedder.embed_query("private diary"), k=10, where=pertinent.SearchFilter("zoe")
        )
        assert any(h.id == "zoe-note#0" and MARKER in h.chunk.text for h in by_vector)


def test_wrong_or_missing_key_is_refused_and_nothing_is_rewritten(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    root = tmp_path / "store"
    with _open(root, embedder, KEY) as px:
        _write_user(px)
    before = _digest(root)
    with pytest.raises(pertinent.DecryptionFailed, match="does not hold") as info:
        _open(root, embedder, KEY2)
    assert info.value.key_id == key_id(KEY)
    with pytest.raises(pertinent.DecryptionFailed, match="encryption_key="):
        _open(root, embedder, None)
    assert _digest(root) == before
    with _open(root, embedder, KEY) as px:
        assert MARKER in px.history("zoe", "s")[0].text


def test_tampered_or_moved_ciphertext_is_refused(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    with _open(tmp_path / "store", embedder, KEY) as px:
        _write_user(px)
        assert isinstance(px.store, EncryptedStore)
        inner = px.store.inner
        assert isinstance(inner, LanceDBStore)
        original = next(e for e in inner.read_events("zoe") if e.kind == "query")
        # another user's row carrying zoe's blob: the user is bound into the ciphertext
        inner.append_events([replace(original, user_id="max")])
        with pytest.raises(pertinent.DecryptionFailed, match="copied from another"):
            px.store.read_events("max")
        # one character of the ciphertext changed on disk
        text = original.text
        assert text is not None
        i = len(text) - 20
        flipped = text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1 :]
        inner.rewrite_events([replace(original, text=flipped)])
        with pytest.raises(pertinent.DecryptionFailed, match="modified"):
            px.store.read_events("zoe")
        with pytest.raises(pertinent.DecryptionFailed):
            pertinent.Pertinent(px.store, px.embedder, px.settings).profile("zoe")


def test_rotation_reseals_everything_and_retires_the_old_key(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    root = tmp_path / "store"
    with _open(root, embedder, KEY) as px:
        _write_user(px)
        history = px.history("zoe", "s")
        assert _scan(root, [_key_id_needle(KEY)])
        report = px.rotate_key(KEY2)
        assert report.key_id == key_id(KEY2)
        assert report.resealed == {"events": 2, "turns": 1, "owned_chunks": 2}
        again = px.rotate_key(KEY2)
        assert again.total == 0 and again.already_current == report.resealed
        assert px.history("zoe", "s") == history
    # No value sealed with the old key is left on disk, not even in old table versions.
    assert _scan(root, [_key_id_needle(KEY)]) == []
    assert _scan(root, [MARKER.encode()]) == []
    with pytest.raises(pertinent.DecryptionFailed):
        _open(root, embedder, KEY)
    with _open(root, embedder, KEY2) as px:
        assert px.history("zoe", "s") == history
        assert MARKER in px.search(f"{MARKER} diary", user_id="zoe", remember=False)[0].text


def test_rotation_resumes_after_an_interruption(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    with _open(root, embedder, KEY) as px:
        _write_user(px, "ann")
        _write_user(px, "bob")
        calls = {"n": 0}
        real = LanceDBStore.rewrite_turns

        def crash_on_second_user(self: LanceDBStore, turns: list[object]) -> int:
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("power cut")
            return real(self, turns)  # type: ignore[arg-type]

        monkeypatch.setattr(LanceDBStore, "rewrite_turns", crash_on_second_user)
        with pytest.raises(RuntimeError, match="power cut"):
            px.rotate_key(KEY2)
        monkeypatch.undo()
    # ann is done (new key), bob is not: the old key alone cannot read ann any more
    with (
        _open(root, embedder, KEY) as px,
        pytest.raises(pertinent.DecryptionFailed, match="Keyring"),
    ):
        px.history("ann", "s")
    with _open(root, embedder, Keyring(KEY2, KEY)) as px:
        report = px.rotate_key(KEY2)
        assert report.resealed["turns"] == 1 and report.already_current["turns"] == 1
        assert report.resealed["events"] == 0 and report.resealed["owned_chunks"] == 2
    with _open(root, embedder, KEY2) as px:
        assert MARKER in px.history("ann", "s")[0].text
        assert MARKER in px.history("bob", "s")[0].text


def test_existing_plaintext_store_is_sealed_by_rotating_to_its_first_key(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    root = tmp_path / "store"
    with _open(root, embedder) as px:
        _write_user(px)
        with pytest.raises(pertinent.ConfigurationError, match="not encrypted"):
            px.rotate_key(KEY)
    assert _scan(root, [MARKER.encode()])
    with _open(root, embedder, KEY) as px:
        assert px.rotate_key(KEY).total == 5
        assert MARKER in px.history("zoe", "s")[0].text
    assert _scan(root, [MARKER.encode()]) == []


def test_key_file_and_bad_keys(tmp_path: Path, embedder: pertinent.CachedQueryEmbedder) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(base64.b64encode(KEY2).decode() + "\n" + KEY.hex() + "\n")
    root = tmp_path / "store"
    with _open(root, embedder, KEY) as px:
        _write_user(px)
    settings = pertinent.Settings(path=root, encryption_key_file=key_file)
    with pertinent.open(settings=settings, embedder=embedder) as px:
        # current key KEY2, older KEY still opens what it sealed
        assert MARKER in px.history("zoe", "s")[0].text
    with pytest.raises(pertinent.InvalidInput, match="16, 24 or 32"):
        _open(tmp_path / "other", embedder, b"too short")
    key_file.write_text("not a key\n")
    with pytest.raises(pertinent.ConfigurationError, match="Line 1"):
        pertinent.open(settings=settings, embedder=embedder)
    assert "KEY" not in repr(Keyring(KEY)) and KEY.hex() not in repr(Keyring(KEY))


@pytest.fixture
def fake() -> Iterator[FakeWeaviate]:
    with FakeWeaviate() as server:
        yield server


def test_weaviate_objects_hold_only_ciphertext(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder, fake: FakeWeaviate
) -> None:
    settings = pertinent.Settings(weaviate_collection_prefix="Enc")

    def stored() -> str:
        names = fake.collection_names()
        objects = [o for n in names for t in fake.tenants(n) or [""] for o in fake.objects(n, t)]
        return json.dumps(objects, default=str)

    def open_cluster(key: bytes | None) -> pertinent.Pertinent:
        return pertinent.open(
            url=fake.url,
            grpc_port=fake.grpc_port,
            settings=settings,
            embedder=embedder,
            encryption_key=key,
        )

    with open_cluster(KEY) as px:
        _write_user(px)
        assert MARKER not in stored()
        assert "borrow checker" in stored()
        assert MARKER in px.history("zoe", "s")[0].text
        assert px.profile("zoe").gate > 0
        px.add_turn("zoe", "s", "assistant", "noted")  # sealed with KEY
    with pytest.raises(pertinent.DecryptionFailed):
        open_cluster(KEY2)
    with open_cluster(KEY) as px:
        assert [t.text for t in px.history("zoe", "s")][1:] == ["noted"]


def test_weaviate_rotation_reseals_every_object_in_place(
    embedder: pertinent.CachedQueryEmbedder, fake: FakeWeaviate
) -> None:
    settings = pertinent.Settings(weaviate_collection_prefix="Rot")
    logs = ("RotEvents", "RotTurns")

    def stored() -> str:
        names = fake.collection_names()
        objects = [o for n in names for t in fake.tenants(n) or [""] for o in fake.objects(n, t)]
        return json.dumps(objects, default=str)

    def object_ids() -> dict[str, list[str]]:
        return {
            f"{n}/{t}": sorted(o["_id"] for o in fake.objects(n, t))
            for n in logs
            for t in fake.tenants(n)
        }

    def open_cluster(key: object) -> pertinent.Pertinent:
        return pertinent.open(
            url=fake.url,
            grpc_port=fake.grpc_port,
            settings=settings,
            embedder=embedder,
            encryption_key=key,  # type: ignore[arg-type]
        )

    def events(px: pertinent.Pertinent, user: str) -> list[tuple[object, ...]]:
        return [
            (e.id, e.kind, e.text, e.item_id, np.asarray(e.vector).tobytes())
            for e in px.store.read_events(user)
        ]

    old, new = _key_id_needle(KEY).decode(), _key_id_needle(KEY2).decode()
    with open_cluster(KEY) as px:
        _write_user(px, "zoe")
        _write_user(px, "Max Power")  # a hashed tenant name
        history = {u: px.history(u, "s") for u in ("zoe", "Max Power")}
        before = {u: events(px, u) for u in ("zoe", "Max Power")}
        ids = object_ids()
        assert old in stored() and new not in stored()
        report = px.rotate_key(KEY2)
        assert report.key_id == key_id(KEY2) and report.users == 2
        assert report.resealed == {"events": 4, "turns": 2, "owned_chunks": 4}
        again = px.rotate_key(KEY2)
        assert again.total == 0 and again.already_current == report.resealed
        # rewritten in place: the same objects in the same tenants, nothing added
        assert object_ids() == ids
        assert {u: px.history(u, "s") for u in history} == history
    dump = stored()
    assert old not in dump and MARKER not in dump and new in dump
    with pytest.raises(pertinent.DecryptionFailed, match="does not hold"):
        open_cluster(KEY)
    with open_cluster(KEY2) as px:
        assert {u: px.history(u, "s") for u in history} == history
        assert {u: events(px, u) for u in before} == before
        assert MARKER in px.search(f"{MARKER} diary", user_id="zoe", remember=False)[0].text
        memories = LongTermMemory(px).search("what is my locker code?", user_id="Max Power")
        assert any(MARKER in m.text for m in memories)
        # the records themselves, not only the store's key check, refuse the old key
        assert isinstance(px.store, EncryptedStore)
        with_old = EncryptedStore(px.store.inner, Sealer(Keyring(KEY)))
        with pytest.raises(pertinent.DecryptionFailed) as info:
            with_old.read_events("zoe")
        assert info.value.key_id == key_id(KEY2)
        with pytest.raises(pertinent.DecryptionFailed):
            with_old.get_chunks(["zoe-note#0"], user_id="zoe")
        # a rewrite never brings back a user forgotten in the meantime
        raw = rewritable(px.store)
        assert isinstance(raw, WeaviateStore)
        stale = raw.read_events("zoe")
        turns = raw.read_user_turns("zoe")
        assert len(stale) == 2 and len(turns) == 1
        px.forget_user("zoe")
        assert raw.rewrite_events(stale) == 0 and raw.rewrite_turns(turns) == 0
        assert raw.read_events("zoe") == [] and raw.read_user_turns("zoe") == []
        assert raw.owned_chunks("zoe") == [] and raw.chunk_owners() == ["Max Power"]
        assert not [t for n in logs for t in fake.tenants(n) if t == "u-zoe"]


def test_cli_keygen_and_rotate(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder, capsys: pytest.CaptureFixture[str]
) -> None:
    from pertinent.cli import main
    from pertinent.privacy.encryption import load_key_file

    old_file, new_file, root = tmp_path / "old.key", tmp_path / "new.key", tmp_path / "store"
    assert main(["encryption", "keygen", "--out", str(old_file)]) == 0
    assert main(["encryption", "keygen", "--out", str(new_file)]) == 0
    assert old_file.stat().st_mode & 0o777 == 0o600
    assert main(["encryption", "keygen", "--out", str(new_file)]) == 2  # never overwrites
    old_key, new_key = load_key_file(old_file)(), load_key_file(new_file)()
    with _open(root, embedder, old_key) as px:
        _write_user(px)
    code = main(
        [
            "encryption",
            "rotate",
            "--data",
            str(root),
            "--key-file",
            str(old_file),
            "--new-key-file",
            str(new_file),
        ]
    )
    assert code == 0
    assert f"re-sealed with key {key_id(new_key)}" in capsys.readouterr().out
    with pytest.raises(pertinent.DecryptionFailed):
        _open(root, embedder, old_key)
    with _open(root, embedder, new_key) as px:
        assert MARKER in px.history("zoe", "s")[0].text
