"""The audit log: what it records (and what it must not), rotation, forgetting, retention."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from conftest import CORPUS

import pertinent
from pertinent.privacy.audit import AuditLog


def _open(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder, **kw: object
) -> pertinent.Pertinent:
    settings = pertinent.Settings(audit_path=tmp_path / "audit" / "retrievals.jsonl", **kw)
    px = pertinent.open(tmp_path / "store", embedder=embedder, settings=settings)
    px.ingest(CORPUS, show_progress=False)
    return px


def test_retrievals_are_audited_without_query_text(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    px = _open(tmp_path, embedder)
    ctx = px.retrieve(
        "secret question about refunds",
        user_id="ann",
        session_id="s",
        budget=pertinent.Budget("gpt-4o", 300),
    )
    px.search("rotate keys", user_id="bob")
    assert px.audit is not None
    entries = px.audit.entries()
    assert [e["user_id"] for e in entries] == ["ann", "bob"]
    first = entries[0]
    assert first["session_id"] == "s" and first["embedding_model"] == "all-MiniLM-L6-v2@384"
    assert first["token_count"] == ctx.token_count and first["tokenizer"] == ctx.tokenizer
    assert [r["chunk_id"] for r in first["results"]] == [r.id for r in ctx.results]
    assert first["results"][0]["explain"] == ctx.results[0].explain.as_dict()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "audit").iterdir())
    assert b"secret question" not in raw and "query" not in first


def test_query_text_only_when_enabled_and_redacted(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    px = _open(tmp_path, embedder, audit_include_query=True, redact_pii=True)
    px.search("refund for jane@example.org", user_id="ann")
    assert px.audit is not None
    assert px.audit.entries()[0]["query"] == "refund for [EMAIL]"


def test_forget_and_retention_rewrite_the_log(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    px = _open(tmp_path, embedder, retention_audit_days=30)
    for user in ("ann", "bob", "ann"):
        px.search("billing", user_id=user)
    assert px.audit is not None
    receipt = px.forget_user("ann")
    assert receipt.deleted["audit_entries"] == 2
    assert [e["user_id"] for e in px.audit.entries()] == ["bob"]
    assert px.forget_user("ann").deleted["audit_entries"] == 0
    later = datetime.now(timezone.utc) + timedelta(days=31)
    report = px.apply_retention(now=later)
    assert report.deleted["audit"] == 1
    assert px.audit.entries() == []


def test_rotation_keeps_every_entry_until_the_last_backup(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl", max_bytes=600, backups=3)
    for i in range(12):
        log.record_retrieval(
            user_id=f"u{i}",
            session_id=None,
            query="q",
            results=[],
            model_id="m",
            at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        )
    files = log.files()
    assert len(files) == 4  # live + 3 backups
    kept = [e["user_id"] for e in log.entries()]
    assert kept == [f"u{i}" for i in range(12 - len(kept), 12)]  # oldest dropped first
    assert all(json.loads(line) for p in files for line in p.read_text().splitlines())
