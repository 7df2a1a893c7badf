"""pertinent as a service: an HTTP API (`pertinent serve`) and an MCP server
(`pertinent mcp`) over the same core. Needs the ``server`` extra:

    pip install 'pertinent[server]'

`create_app` builds the FastAPI app; the modules it uses import FastAPI and the
Prometheus client lazily, so `import pertinent` works without the extra and a missing
package raises `MissingDependency` naming it. See docs/server.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pertinent.server.auth import ROLES, ApiKey, KeyStore, NewKey, Role
from pertinent.server.limits import RateLimiter, ServerLimits
from pertinent.server.tenancy import Tenant

if TYPE_CHECKING:
    from fastapi import FastAPI

    from pertinent.client import Pertinent
    from pertinent.server.observability import StageTracer

__all__ = [
    "ROLES",
    "ApiKey",
    "KeyStore",
    "NewKey",
    "RateLimiter",
    "Role",
    "ServerLimits",
    "Tenant",
    "create_app",
]


def create_app(
    px: Pertinent,
    keys: KeyStore,
    limits: ServerLimits | None = None,
    *,
    tracing: bool | StageTracer = False,
) -> FastAPI:
    """The HTTP API over `px` (`pertinent.server.app.create_app`); raises
    `MissingDependency` without the ``server`` extra."""
    from pertinent.server.app import create_app as build

    return build(px, keys, limits, tracing=tracing)
