"""The `pertinent serve`, `pertinent keys` and `pertinent mcp` commands.

Registered on the main parser by `register`; nothing here imports FastAPI, uvicorn or the
MCP SDK until a command runs, so `pertinent --help` stays fast without the extra.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pertinent.cli import _open as cli_open
from pertinent.errors import MissingDependency

__all__ = ["register"]

_DEFAULT_DATA = "./pertinent-data"
KEYS_FILE = "api-keys.json"


def _data_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--data",
        default=os.environ.get("PERTINENT_PATH", _DEFAULT_DATA),
        help=f"store directory (env PERTINENT_PATH, default {_DEFAULT_DATA})",
    )


def _store_args(sp: argparse.ArgumentParser) -> None:
    _data_args(sp)
    sp.add_argument("--backend", choices=["lancedb", "weaviate"], help="store backend")
    sp.add_argument("--url", help="Weaviate REST URL (env PERTINENT_WEAVIATE_URL)")
    sp.add_argument("--api-key", help="Weaviate API key (env PERTINENT_WEAVIATE_API_KEY)")
    sp.add_argument("--grpc-port", type=int, help="Weaviate gRPC port")


def _keys_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--keys",
        default=os.environ.get("PERTINENT_KEYS_FILE"),
        help=f"API key file (env PERTINENT_KEYS_FILE, default <data>/{KEYS_FILE})",
    )


def _keys_path(args: argparse.Namespace) -> Path:
    return Path(args.keys) if args.keys else Path(args.data) / KEYS_FILE


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependency("uvicorn", "server") from exc
    from pertinent.server import KeyStore, ServerLimits, create_app

    overrides: dict[str, Any] = {
        k: v
        for k, v in (
            ("rate_per_s", args.rate),
            ("burst", args.burst),
            ("timeout_s", args.timeout),
            ("max_body_bytes", args.max_body_bytes),
        )
        if v is not None
    }
    if args.log_user_text:
        overrides["log_user_text"] = True
    limits = ServerLimits(**overrides)
    keys = KeyStore(_keys_path(args))
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    if args.otel:
        from pertinent.server.observability import configure_exporter

        configure_exporter()
    with cli_open(args) as px:
        if not keys.list():
            print(
                f"no API keys in {keys.path}: create one with "
                f"`pertinent keys create --tenant NAME --role admin --data {args.data}`"
            )
        app = create_app(px, keys, limits, tracing=args.otel)
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,  # the app logs each request with its id, without query strings
        )
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from pertinent.server.auth import KeyStore

    keys = KeyStore(_keys_path(args))
    if args.keys_command == "create":
        new = keys.create(args.tenant, args.role, name=args.name)
        print(new.key)
        print(
            f"key {new.record.key_id} for tenant {new.record.tenant!r}, roles "
            f"{', '.join(sorted(new.record.roles))}; shown once, stored hashed in {keys.path}",
            file=sys.stderr,
        )
    elif args.keys_command == "list":
        for k in keys.list(args.tenant):
            state = f"revoked {k.revoked.isoformat()}" if k.revoked else "active"
            name = f"  {k.name}" if k.name else ""
            roles = ",".join(sorted(k.roles))
            print(f"{k.key_id}  {k.tenant}  {roles}  {k.created.isoformat()}  {state}{name}")
    else:
        k = keys.revoke(args.key_id)
        print(f"revoked {k.key_id} (tenant {k.tenant!r})")
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    from pertinent.server.mcp_server import run_mcp

    user = args.user or os.environ.get("PERTINENT_MCP_USER")
    if not user:
        from pertinent.errors import ConfigurationError

        raise ConfigurationError(
            "The MCP server acts for one user: pass --user ID or set PERTINENT_MCP_USER."
        )
    with cli_open(args) as px:
        run_mcp(
            px,
            user_id=user,
            principals=args.principal or (),
            session_id=args.session,
            transport=args.transport,
            host=args.host,
            port=args.port,
            max_tokens=args.max_tokens,
            model=args.model,
        )
    return 0


def register(sub: Any) -> None:
    """Add the server commands to the main parser's subparsers."""
    s = sub.add_parser("serve", help="run the HTTP API (needs pertinent[server])")
    _store_args(s)
    _keys_arg(s)
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--rate", type=float, help="requests per second per key (default 20)")
    s.add_argument("--burst", type=int, help="burst per key (default 40)")
    s.add_argument("--timeout", type=float, help="seconds per request before 503 (default 30)")
    s.add_argument("--max-body-bytes", type=int, help="largest request body (default 2 MB)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument(
        "--log-user-text", action="store_true", help="also log query texts (off by default)"
    )
    s.add_argument(
        "--otel",
        action="store_true",
        help="OpenTelemetry spans per core call and pipeline stage (OTLP if installed)",
    )
    s.set_defaults(func=cmd_serve)

    k = sub.add_parser("keys", help="create, list and revoke API keys of `pertinent serve`")
    k_sub = k.add_subparsers(dest="keys_command", required=True)
    kc = k_sub.add_parser("create", help="create a key (printed once)")
    _data_args(kc)
    _keys_arg(kc)
    kc.add_argument("--tenant", required=True, help="the organisation the key belongs to")
    kc.add_argument(
        "--role",
        action="append",
        required=True,
        choices=["reader", "writer", "admin"],
        help="repeatable: reader retrieves; writer also records; admin also ingests, forgets",
    )
    kc.add_argument("--name", help="a label for the key (who or what uses it)")
    kc.set_defaults(func=cmd_keys)
    kl = k_sub.add_parser("list", help="list keys (never the secrets)")
    _data_args(kl)
    _keys_arg(kl)
    kl.add_argument("--tenant", help="only this tenant's keys")
    kl.set_defaults(func=cmd_keys)
    kr = k_sub.add_parser("revoke", help="revoke a key by its id (from `keys list`)")
    _data_args(kr)
    _keys_arg(kr)
    kr.add_argument("key_id")
    kr.set_defaults(func=cmd_keys)

    m = sub.add_parser("mcp", help="run the MCP server for one user (needs pertinent[server])")
    _store_args(m)
    m.add_argument("--user", help="the user every tool acts for (env PERTINENT_MCP_USER)")
    m.add_argument("--principal", action="append", help="the user's ACL principal, repeatable")
    m.add_argument("--session", help="session id of this MCP connection (default: a new one)")
    m.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    m.add_argument("--host", default="127.0.0.1", help="for streamable-http")
    m.add_argument("--port", type=int, default=8765, help="for streamable-http")
    m.add_argument("--model", default="gpt-4o", help="model whose tokenizer counts the budget")
    m.add_argument("--max-tokens", type=int, default=1500, help="default context budget")
    m.set_defaults(func=cmd_mcp)
