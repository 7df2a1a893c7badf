"""How a tenant's names become store names, and back.

The store knows nothing of tenants: the server namespaces every name a request carries
before it reaches the core, so isolation rests on the core's own guarantees (owner and
ACL filters) and holds for every route at once.

- user ids: ``"{tenant}/{user}"`` (a tenant name has no ``/``, so two tenants can never
  produce the same store user, and ``user:{tenant}/{user}`` is that user's principal);
- document ids: ``"{tenant}/{doc}"``; their chunk ids follow (``"{tenant}/{doc}#0"``);
- ACL principals: ``"kind:value"`` becomes ``"kind:{tenant}/value"``; a document sent
  without an ACL gets ``"tenant:{tenant}"``, the principal every key of that tenant
  holds. A shared document with an empty ACL (readable by all) is never written.

On the way out the tenant prefix is removed, so clients only ever see their own names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pertinent.errors import InvalidInput
from pertinent.ingest import normalize_acl

__all__ = [
    "MAX_ID_CHARS",
    "TENANT_PATTERN",
    "Tenant",
    "check_tenant",
]

TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
MAX_ID_CHARS = 256
# Long-term memory ids are "mem:{quoted user}:..."; they are owner-scoped in the store,
# so they pass through unprefixed, and no tenant document may take that prefix.
_MEMORY_PREFIX = "mem:"


def check_tenant(name: str) -> str:
    if not isinstance(name, str) or not TENANT_PATTERN.fullmatch(name):
        raise InvalidInput(
            f"Tenant name {name!r} is not valid: use 1-64 lower-case letters, digits, '_', "
            "'.' or '-', starting with a letter or digit."
        )
    return name


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be a non-empty string.")
    if len(value) > MAX_ID_CHARS:
        raise InvalidInput(f"{what} has {len(value)} characters; use at most {MAX_ID_CHARS}.")
    if any(ord(ch) < 32 for ch in value):
        raise InvalidInput(f"{what} may not contain control characters.")
    return value


class Tenant:
    """The name mapping of one tenant (an organisation)."""

    __slots__ = ("name", "prefix")

    def __init__(self, name: str) -> None:
        self.name = check_tenant(name)
        self.prefix = f"{name}/"

    @property
    def principal(self) -> str:
        """The principal every key of this tenant holds, and default ACL of its documents."""
        return f"tenant:{self.name}"

    def user(self, user_id: str) -> str:
        return self.prefix + _check_name(user_id, "user_id")

    def doc(self, doc_id: str) -> str:
        _check_name(doc_id, "Document id")
        if doc_id.startswith(_MEMORY_PREFIX):
            raise InvalidInput(
                f"Document id {doc_id!r} starts with {_MEMORY_PREFIX!r}, which long-term "
                "memory reserves; choose another id."
            )
        return self.prefix + doc_id

    def item(self, item_id: str) -> str:
        """A chunk id a client sends back (from a result): memory ids are owner-scoped
        by the store and pass as they are; every other id is this tenant's."""
        _check_name(item_id, "item_id")
        return item_id if item_id.startswith(_MEMORY_PREFIX) else self.prefix + item_id

    def acl(self, principals: Iterable[str]) -> tuple[str, ...]:
        """Stored ACL of a document: the given principals in this tenant's namespace, or
        the tenant principal when none are given (never an empty, world-readable ACL)."""
        mapped = self.principals(principals)
        return mapped or (self.principal,)

    def principals(self, principals: Iterable[str]) -> tuple[str, ...]:
        out = []
        for p in normalize_acl(list(principals)):
            kind, _, value = p.partition(":")
            out.append(f"{kind}:{self.prefix}{value}")
        return tuple(sorted(set(out)))

    def caller_principals(self, principals: Iterable[str]) -> tuple[str, ...]:
        """What a request reads with: its principals, mapped, plus the tenant's own."""
        return (self.principal, *self.principals(principals))

    def strip(self, name: str) -> str:
        """A store name as the client knows it (the prefix removed)."""
        return name[len(self.prefix) :] if name.startswith(self.prefix) else name

    def strip_text(self, text: str) -> str:
        """An error message without this tenant's store prefix in it."""
        return text.replace(self.prefix, "")

    def strip_principal(self, principal: str) -> str:
        kind, _, value = principal.partition(":")
        return f"{kind}:{self.strip(value)}" if value.startswith(self.prefix) else principal
