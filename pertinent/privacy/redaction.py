"""PII redaction before user-owned text is stored or sent to an LLM.

`Redactor` is the seam (Presidio or a company's own DLP service can plug in); the
default `PatternRedactor` finds e-mail addresses, phone numbers, payment card numbers,
IBANs, IP addresses and API-key-like secrets. Validation is delegated to well-kept
libraries rather than regexes alone, because regexes alone flag every long number:
phone numbers are found and validated by `phonenumbers` (Google's libphonenumber
metadata), card numbers must pass the Luhn check and IBANs the ISO 7064 mod-97 check
(`python-stdnum`), IP addresses must parse with `ipaddress`.

A report lists what was replaced (kind and position in the *redacted* text), never
the original values: a redaction log that keeps the secrets would defeat its purpose.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pertinent.errors import MissingDependency

__all__ = [
    "KINDS",
    "PatternRedactor",
    "Redaction",
    "RedactionReport",
    "Redactor",
]

KINDS: tuple[str, ...] = ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "SECRET")


@dataclass(frozen=True)
class Redaction:
    """One replaced span: its kind and where its placeholder sits in the output text."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class RedactionReport:
    text: str
    redactions: tuple[Redaction, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.redactions)


@runtime_checkable
class Redactor(Protocol):
    def redact(self, text: str) -> RedactionReport: ...


_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,63})@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}\b"
)
# 13-19 digits, optionally grouped by single spaces or dashes.
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# Secrets: vendor prefixes with their documented shapes, JWTs, and key=value assignments.
_SECRET = re.compile(
    r"(?<![\w-])(?:"
    r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|gh[pousr]_[A-Za-z0-9]{36,}"
    r"|github_pat_[A-Za-z0-9_]{40,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|AKIA[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r")(?![\w-])"
)
_ASSIGNED_SECRET = re.compile(
    r"(?i)\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|password|passwd)"
    r"\s*[:=]\s*[\"']?([^\s\"']{8,})"
)

Finder = Callable[[str], Iterable[tuple[int, int]]]


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


class PatternRedactor:
    """Replaces PII with ``[KIND]`` placeholders.

    `kinds` selects what to look for; `phone_regions` are the regions whose national
    formats count as phone numbers (numbers written with a ``+`` country code are found
    whatever the regions). Overlaps resolve to the earlier, then longer, match.
    """

    def __init__(
        self,
        kinds: Sequence[str] = KINDS,
        *,
        phone_regions: Sequence[str] = ("US", "GB"),
        placeholder: str = "[{kind}]",
    ) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds {sorted(unknown)}; choose from {KINDS}")
        try:
            import phonenumbers
            from stdnum import iban, luhn
        except ImportError as exc:
            raise MissingDependency("phonenumbers and python-stdnum", "pii") from exc
        self._phonenumbers = phonenumbers
        self._luhn = luhn
        self._iban = iban
        self.kinds = tuple(kinds)
        self.phone_regions = tuple(phone_regions)
        self.placeholder = placeholder
        self._finders: dict[str, Finder] = {
            "EMAIL": lambda t: ((m.start(), m.end()) for m in _EMAIL.finditer(t)),
            "SECRET": self._secrets,
            "CARD": self._cards,
            "IBAN": self._ibans,
            "IP": self._ips,
            "PHONE": self._phones,
        }

    def _secrets(self, text: str) -> Iterable[tuple[int, int]]:
        for m in _SECRET.finditer(text):
            yield m.start(), m.end()
        for m in _ASSIGNED_SECRET.finditer(text):
            yield m.start(1), m.end(1)

    def _cards(self, text: str) -> Iterable[tuple[int, int]]:
        for m in _CARD.finditer(text):
            digits = _digits(m.group())
            if 13 <= len(digits) <= 19 and self._luhn.is_valid(digits):
                yield m.start(), m.end()

    def _ibans(self, text: str) -> Iterable[tuple[int, int]]:
        for m in _IBAN.finditer(text):
            if self._iban.is_valid(m.group()):
                yield m.start(), m.end()

    def _ips(self, text: str) -> Iterable[tuple[int, int]]:
        for rx in (_IPV4, _IPV6):
            for m in rx.finditer(text):
                try:
                    ipaddress.ip_address(m.group())
                except ValueError:
                    continue
                yield m.start(), m.end()

    def _phones(self, text: str) -> Iterable[tuple[int, int]]:
        pn = self._phonenumbers
        for region in self.phone_regions:
            for m in pn.PhoneNumberMatcher(text, region, leniency=pn.Leniency.VALID):
                yield m.start, m.end

    def redact(self, text: str) -> RedactionReport:
        spans: list[tuple[int, int, str]] = []
        for kind in self.kinds:
            spans.extend((s, e, kind) for s, e in self._finders[kind](text))
        spans.sort(key=lambda x: (x[0], -(x[1] - x[0])))
        chosen: list[tuple[int, int, str]] = []
        for s, e, kind in spans:
            if chosen and s < chosen[-1][1]:
                continue  # overlaps an earlier (or longer) match
            chosen.append((s, e, kind))
        if not chosen:
            return RedactionReport(text=text)
        out: list[str] = []
        redactions: list[Redaction] = []
        pos = 0
        length = 0
        for s, e, kind in chosen:
            out.append(text[pos:s])
            length += s - pos
            token = self.placeholder.format(kind=kind)
            redactions.append(Redaction(kind=kind, start=length, end=length + len(token)))
            out.append(token)
            length += len(token)
            pos = e
        out.append(text[pos:])
        counts = Counter(r.kind for r in redactions)
        return RedactionReport(text="".join(out), redactions=tuple(redactions), counts=dict(counts))
