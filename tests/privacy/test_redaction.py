"""The redaction table: positives, negatives and near misses, per kind.

Each row is (text, the kinds that must be found, in order). A near miss is a string
shaped like PII that is not (a Luhn-failing card, a date, a version number, a hash).
Known over-redaction, on the safe side and so not in the table: a four-part version
number ("10.2.3.4") is a valid IPv4 address and is redacted as one.
The precision and recall over the whole table are printed by
`python -m pytest tests/privacy/test_redaction.py -s` and quoted in the closing note.
"""

from __future__ import annotations

import pytest

from pertinent.privacy.redaction import KINDS, PatternRedactor

TABLE: list[tuple[str, list[str]]] = [
    # e-mail
    ("write to jane.doe+billing@example.co.uk today", ["EMAIL"]),
    ("Contact: ops@mail.example.com.", ["EMAIL"]),
    ("the @decorator syntax and user@localhost are not addresses", []),
    ("see docs at example.com/contact@", []),
    # phone
    ("call +1 415-555-2671 after lunch", ["PHONE"]),
    ("UK office: 020 7946 0958", ["PHONE"]),
    ("Berlin: +49 30 901820", ["PHONE"]),
    ("(415) 555-2671 is my desk", ["PHONE"]),
    ("order number 123456789 shipped", []),
    ("released on 2026-11-26 at 10:30", []),
    ("version 10.2.3 of the driver", []),
    # card (Luhn)
    ("card 4111 1111 1111 1111 exp 12/29", ["CARD"]),
    ("pay with 5500-0000-0000-0004", ["CARD"]),
    ("amex 378282246310005", ["CARD"]),
    ("card 4111 1111 1111 1112 is mistyped", []),
    ("tracking 1234567890123", []),
    # IBAN (mod 97)
    ("IBAN DE89 3704 0044 0532 0130 00 for the refund", ["IBAN"]),
    ("send to GB82WEST12345698765432", ["IBAN"]),
    ("GB82WEST12345698765433 has a wrong check digit", []),
    ("the code AB12CDEFGHIJKLMNOP is a product key", []),
    # IP
    ("the server at 192.168.10.25 timed out", ["IP"]),
    ("ping 2001:db8:85a3::8a2e:370:7334 now", ["IP"]),
    ("version 1.2.3.4.5 and 999.1.1.1 are not addresses", []),
    ("ratio 3:2:1 and time 10:30:15", []),
    # secrets
    ("export OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwxyz123456", ["SECRET"]),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789AB leaked", ["SECRET"]),
    ("aws AKIAIOSFODNN7EXAMPLE in the config", ["SECRET"]),
    ("password: hunter2hunter2", ["SECRET"]),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ["SECRET"],
    ),
    ("commit 3f786850e387550fdab836ed7e6dc881de23001b fixed it", []),
    ("the sk-learn package and a password field", []),
    # mixed
    (
        "Jane (jane@corp.io, +44 20 7946 0958) paid with 4111111111111111 from 10.0.0.7",
        ["EMAIL", "PHONE", "CARD", "IP"],
    ),
    ("nothing personal here: refunds take five business days", []),
]


@pytest.fixture(scope="module")
def redactor() -> PatternRedactor:
    return PatternRedactor()


@pytest.mark.parametrize(("text", "expected"), TABLE)
def test_redaction_table(redactor: PatternRedactor, text: str, expected: list[str]) -> None:
    report = redactor.redact(text)
    assert [r.kind for r in report.redactions] == expected
    for r in report.redactions:
        assert report.text[r.start : r.end] == f"[{r.kind}]"
    assert report.changed == bool(expected)
    if not expected:
        assert report.text == text


def test_precision_and_recall_over_the_table(redactor: PatternRedactor) -> None:
    tp = fp = fn = 0
    per_kind: dict[str, list[int]] = {k: [0, 0, 0] for k in KINDS}
    for text, expected in TABLE:
        found = [r.kind for r in redactor.redact(text).redactions]
        for kind in KINDS:
            e, f = expected.count(kind), found.count(kind)
            per_kind[kind][0] += min(e, f)
            per_kind[kind][1] += max(0, f - e)
            per_kind[kind][2] += max(0, e - f)
    for kind, (t, p, n) in per_kind.items():
        tp, fp, fn = tp + t, fp + p, fn + n
        print(f"{kind}: precision {t / max(1, t + p):.2f} recall {t / max(1, t + n):.2f} (tp {t})")
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    print(f"ALL: precision {precision:.3f} recall {recall:.3f} over {len(TABLE)} rows")
    assert precision == 1.0 and recall == 1.0


def test_originals_are_not_in_the_report(redactor: PatternRedactor) -> None:
    report = redactor.redact("mail bob@example.org, card 4111111111111111")
    assert "bob@example.org" not in repr(report)
    assert "4111111111111111" not in repr(report)
    assert report.counts == {"EMAIL": 1, "CARD": 1}


def test_kinds_can_be_chosen() -> None:
    only_mail = PatternRedactor(kinds=["EMAIL"])
    report = only_mail.redact("bob@example.org 4111111111111111")
    assert report.text == "[EMAIL] 4111111111111111"
    with pytest.raises(ValueError, match="unknown PII kinds"):
        PatternRedactor(kinds=["SSN"])


def test_user_owned_text_is_redacted_before_it_is_stored(
    tmp_path: object, embedder: object
) -> None:
    from pathlib import Path

    import pertinent

    assert isinstance(tmp_path, Path)
    px = pertinent.open(
        tmp_path / "s",
        embedder=embedder,  # type: ignore[arg-type]
        settings=pertinent.Settings(redact_pii=True),
    )
    px.ingest({"id": "shared", "text": "Support line: +1 415-555-2671"}, show_progress=False)
    px.ingest(
        {"id": "mine", "text": "my card is 4111 1111 1111 1111"}, owner="ann", show_progress=False
    )
    px.record("ann", pertinent.Event(kind="query", text="email me at ann@example.org"))
    px.add_turn("ann", "s1", "user", "my IBAN is DE89 3704 0044 0532 0130 00")
    px.retrieve("call bob at +44 20 7946 0958", user_id="ann", session_id="s1")

    texts = [e.text for e in px.store.read_events("ann")]
    assert texts == ["email me at [EMAIL]", "call bob at [PHONE]"]
    assert [t.text for t in px.history("ann", "s1")] == ["my IBAN is [IBAN]", "call bob at [PHONE]"]
    assert px.store.get_chunks(["mine#0"], user_id="ann")[0].text == "my card is [CARD]"
    # shared documents are the organisation's, not the user's: left as written
    assert px.store.get_chunks(["shared#0"])[0].text == "Support line: +1 415-555-2671"
    assert px.redaction_counts == {"EMAIL": 1, "PHONE": 2, "IBAN": 1, "CARD": 1}
    raw = b"".join(p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file())
    for secret in (b"ann@example.org", b"4111 1111 1111 1111", b"7946 0958", b"0532 0130"):
        assert secret not in raw
