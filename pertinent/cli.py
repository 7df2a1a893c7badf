"""The `pertinent` command: demo, ingest, ask, forget, retention.

argparse rather than click/typer: four subcommands do not justify a dependency, and
the CLI must start fast (model loading is deferred until a command needs it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pertinent.errors import PertinentError

if TYPE_CHECKING:
    import pertinent

__all__ = ["main"]

DEFAULT_DATA = "./pertinent-data"


def _open(args: argparse.Namespace, **settings: object) -> pertinent.Pertinent:
    """The store the command's options name: --data for the embedded store, or
    --backend weaviate / --url for a cluster (options override PERTINENT_* env vars).
    `settings` overrides Settings fields that are set (a key file, for encryption)."""
    from pertinent.client import open as open_store
    from pertinent.config import Settings

    overrides = {k: v for k, v in settings.items() if v}
    return open_store(
        args.data,
        settings=Settings().model_copy(update=overrides) if overrides else None,
        backend=args.backend,
        url=args.url,
        api_key=args.api_key,
        grpc_port=args.grpc_port,
    )


def cmd_ingest(args: argparse.Namespace) -> int:
    import pertinent

    with _open(args) as px:
        paths = [Path(p) for p in args.paths]
        for p in paths:
            try:
                missing = not p.exists()
            except OSError as exc:  # e.g. a name too long for the file system
                raise pertinent.DocumentLoadError(
                    f"{str(p)[:200]!r} cannot be read: {exc.strerror}; pass a file or directory."
                ) from exc
            if missing:
                raise pertinent.DocumentLoadError(f"{p} does not exist; pass a file or directory.")
        report = px.ingest(paths, acl=args.acl or (), owner=args.owner)
        where = args.data if px.settings.backend == "lancedb" else px.settings.weaviate_url
        print(f"ingested {report.documents} documents as {report.chunks} chunks into {where}")
        if not args.no_optimize:
            px.optimize()  # a bulk load leaves the embedded indexes usable, not tidy
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    import pertinent

    with _open(args) as px:
        ctx = px.retrieve(
            args.query,
            user_id=args.user,
            session_id=args.session,
            principals=args.principal or (),
            budget=pertinent.Budget(model=args.model, max_tokens=args.max_tokens),
            remember=not args.no_remember,
        )
        for r in ctx.results[: args.top]:
            print(f"#{r.rank} {r.id}  {r.explain}")
        print(
            f"\n--- packed context: {ctx.token_count}/{ctx.budget.max_tokens} tokens "
            f"({ctx.tokenizer}) ---"
        )
        print(ctx.text)
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    with _open(args) as px:
        receipt = px.forget_user(args.user)
    print(f"forgot user {receipt.user_id!r} at {receipt.at.isoformat()}:")
    for kind, n in receipt.deleted.items():
        print(f"  {kind}: {n}")
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    from datetime import datetime

    import pertinent

    update = {
        k: v
        for k, v in (
            ("retention_events_days", args.events_days),
            ("retention_turns_days", args.turns_days),
        )
        if v is not None
    }
    try:
        now = datetime.fromisoformat(args.now) if args.now else None
    except ValueError as exc:
        raise pertinent.InvalidInput(
            f"--now {args.now!r} is not an ISO 8601 time (e.g. 2026-11-26T12:00:00+00:00)."
        ) from exc
    with _open(args) as px:
        if update:
            px.settings = px.settings.model_copy(update=update)
        report = px.apply_retention(now=now)
    if not report.cutoffs:
        print(
            "no retention window is set (--events-days / --turns-days or "
            "PERTINENT_RETENTION_EVENTS_DAYS / PERTINENT_RETENTION_TURNS_DAYS): nothing purged"
        )
    for log, n in report.deleted.items():
        print(f"{log}: purged {n} rows older than {report.cutoffs[log].isoformat()}")
    return 0


def cmd_encryption_keygen(args: argparse.Namespace) -> int:
    import base64

    import pertinent
    from pertinent.privacy.encryption import key_id, new_key

    key = new_key()
    line = base64.b64encode(key).decode("ascii")
    if args.out is None:
        print(line)
        return 0
    out = Path(args.out)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise pertinent.InvalidInput(
            f"{out} exists; keygen never overwrites a key. Pass another --out."
        ) from exc
    with os.fdopen(fd, "w") as f:
        f.write(line + "\n")
    print(f"wrote key {key_id(key)} to {out} (mode 600); keep a copy: without it, data is lost")
    return 0


def cmd_encryption_rotate(args: argparse.Namespace) -> int:
    from pertinent.privacy.encryption import load_key_file

    new = load_key_file(args.new_key_file)
    with _open(args, encryption_key_file=args.key_file) as px:
        report = px.rotate_key(new)
    print(f"re-sealed with key {report.key_id} ({report.users} users):")
    for kind, n in report.resealed.items():
        print(f"  {kind}: {n} re-sealed, {report.already_current[kind]} already current")
    print(f"use {args.new_key_file} as the key file from now on; the old key no longer opens it")
    return 0


def cmd_reembed(args: argparse.Namespace) -> int:
    from pertinent.embeddings import SentenceTransformerEmbedder

    with _open(args) as px:
        emb = SentenceTransformerEmbedder(args.model, precision=px.settings.embedding_precision)
        report = px.reembed(emb, model=args.model)
    print(
        f"built {report.version} ({report.model_id}) beside {report.previous} and switched: "
        f"{report.shared_chunks} shared chunks, {report.owned_chunks} user-owned chunks, "
        f"{report.events} events ({report.dropped_events} dropped), {report.turns} turns, "
        f"{report.users} users. `pertinent rollback` switches back."
    )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    import pertinent
    from pertinent.client import resolve_settings
    from pertinent.versions import home_for, switch

    settings = resolve_settings(
        args.data,
        backend=args.backend,
        url=args.url,
        api_key=args.api_key,
        grpc_port=args.grpc_port,
    )
    home = home_for(settings)  # the registry: a file beside the store, or a cluster object
    try:
        registry = home.load()
        if registry is None or registry.previous is None:
            where = settings.weaviate_url if settings.backend == "weaviate" else args.data
            raise pertinent.InvalidInput(
                f"{where} has no previous embedding version to roll back to (never re-embedded)."
            )
        new = switch(home, registry, registry.previous)
    finally:
        home.close()
    active = new.active_version
    print(
        f"active embedding version: {active.id} ({active.model_id}); {new.previous} is kept. "
        "Processes that have the store open switch when they reopen it."
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pertinent.demo import run_demo

    return run_demo(
        data=Path(args.data),
        root=Path(args.root) if args.root else None,
        fresh=not args.keep,
        backend=args.backend,
        url=args.url,
        api_key=args.api_key,
        grpc_port=args.grpc_port,
    )


def _eval_common(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--data", required=True, help="the data set (a file or directory)")
    sp.add_argument("--out", help="write the results as JSON to this file")
    sp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting for this run, e.g. weights.user=2 (repeatable)",
    )
    sp.add_argument("--max-queries", type=int, help="only the first N queries (a quick look)")
    sp.add_argument(
        "--cache",
        help="directory for cached document embeddings (default ~/.cache/pertinent/eval)",
    )
    sp.add_argument("--no-cache", action="store_true", help="embed every document again")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    sp.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")


def _eval_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, for the results file."""
    parts = ["pertinent", "eval", args.protocol, "--data", args.data]
    parts += [f"--set {item}" for item in args.set]
    if args.methods:
        parts.append(f"--methods {args.methods}")
    if args.max_queries:
        parts.append(f"--max-queries {args.max_queries}")
    if args.reranker:
        parts.append(f"--reranker {args.reranker}")
    return " ".join(parts)


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from pertinent.eval.runner import parse_overrides, run_protocol

    reranker = None
    if args.reranker:
        from pertinent.retrievers.rerank import CrossEncoderReranker

        reranker = CrossEncoderReranker(args.reranker)
    report = run_protocol(
        args.protocol,
        args.data,
        overrides=parse_overrides(args.set),
        methods=[m.strip() for m in args.methods.split(",")] if args.methods else None,
        reranker=reranker,
        max_queries=args.max_queries,
        cache_dir=Path(args.cache) if args.cache else None,
        use_cache=not args.no_cache,
        progress=False if args.no_progress else None,
        resamples=args.resamples,
        seed=args.seed,
        command=_eval_command(args),
    )
    markdown = args.format == "markdown"
    print(f"{report.dataset}: {report.queries} queries, commit {report.commit}, {report.date}")
    print(report.table(markdown=markdown))
    if report.per_category:
        print()
        print(report.category_table(markdown=markdown))
    if args.out:
        Path(args.out).write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    import json

    from pertinent.eval.runner import parse_overrides
    from pertinent.eval.tune import parse_grid, tune

    report = tune(
        args.protocol,
        args.data,
        overrides=parse_overrides(args.set),
        grid=parse_grid(args.grid),
        params=[k.strip() for k in args.params.split(",")] if args.params else None,
        rounds=args.rounds,
        min_gain=args.min_gain,
        max_queries=args.max_queries,
        cache_dir=Path(args.cache) if args.cache else None,
        use_cache=not args.no_cache,
        progress=False if args.no_progress else None,
        resamples=args.resamples,
        seed=args.seed,
        log=None if args.quiet else print,
    )
    print(report.summary())
    if args.out:
        Path(args.out).write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pertinent",
        description="Personalized retrieval for LLM agents (embedded LanceDB store).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def data_arg(sp: argparse.ArgumentParser, default: str = DEFAULT_DATA) -> None:
        sp.add_argument(
            "--data",
            default=os.environ.get("PERTINENT_PATH", default),
            help=f"store directory (env PERTINENT_PATH, default {default})",
        )

    def backend_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--backend",
            choices=["lancedb", "weaviate"],
            help="store backend (env PERTINENT_BACKEND, default lancedb; --url implies weaviate)",
        )
        sp.add_argument("--url", help="Weaviate REST URL (env PERTINENT_WEAVIATE_URL)")
        sp.add_argument("--api-key", help="Weaviate API key (env PERTINENT_WEAVIATE_API_KEY)")
        sp.add_argument(
            "--grpc-port", type=int, help="Weaviate gRPC port (env PERTINENT_WEAVIATE_GRPC_PORT)"
        )

    d = sub.add_parser("demo", help="two users, one question, different answers")
    data_arg(d, "./pertinent-demo-data")
    backend_args(d)
    d.add_argument("--root", help="project root whose README.md and docs/ are ingested")
    d.add_argument(
        "--keep", action="store_true", help="reuse the demo store instead of a fresh one"
    )
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("ingest", help="ingest files or directories (.md, .txt, .rst)")
    data_arg(i)
    backend_args(i)
    i.add_argument("paths", nargs="+")
    i.add_argument("--acl", action="append", help="principal allowed to read, e.g. role:support")
    i.add_argument("--owner", help="make the documents private to this user id")
    i.add_argument(
        "--no-optimize",
        action="store_true",
        help="skip bringing the indexes up to date afterwards (see Pertinent.optimize)",
    )
    i.set_defaults(func=cmd_ingest)

    a = sub.add_parser("ask", help="retrieve and pack context for a user")
    data_arg(a)
    backend_args(a)
    a.add_argument("query")
    a.add_argument("--user", help="user id (personalizes; unknown users get plain search)")
    a.add_argument("--session", help="session id")
    a.add_argument("--principal", action="append", help="caller's ACL principal, repeatable")
    a.add_argument("--model", default="gpt-4o", help="model whose tokenizer counts the budget")
    a.add_argument("--max-tokens", type=int, default=1500)
    a.add_argument("--top", type=int, default=5, help="results to list")
    a.add_argument(
        "--no-remember", action="store_true", help="do not record the query in the user's history"
    )
    a.set_defaults(func=cmd_ask)

    f = sub.add_parser("forget", help="delete everything a user owns")
    data_arg(f)
    backend_args(f)
    f.add_argument("user")
    f.set_defaults(func=cmd_forget)

    r = sub.add_parser("retention", help="purge events and session turns past their window")
    r_sub = r.add_subparsers(dest="retention_command", required=True)
    ra = r_sub.add_parser("apply", help="purge now (profiles are refolded from what remains)")
    data_arg(ra)
    backend_args(ra)
    ra.add_argument("--events-days", type=float, help="keep events this many days")
    ra.add_argument("--turns-days", type=float, help="keep session turns this many days")
    ra.add_argument("--now", help="the clock to apply the windows at (ISO 8601; default now)")
    ra.set_defaults(func=cmd_retention)

    enc = sub.add_parser("encryption", help="encryption at rest: keys and rotation")
    enc_sub = enc.add_subparsers(dest="encryption_command", required=True)
    kg = enc_sub.add_parser("keygen", help="make a random AES-256 key (base64)")
    kg.add_argument("--out", help="write it to this new file (mode 600) instead of stdout")
    kg.set_defaults(func=cmd_encryption_keygen)
    rot = enc_sub.add_parser("rotate", help="re-seal every user-owned record with a new key")
    data_arg(rot)
    backend_args(rot)
    rot.add_argument("--key-file", help="the current key file (env PERTINENT_ENCRYPTION_KEY_FILE)")
    rot.add_argument("--new-key-file", required=True, help="file holding the new key")
    rot.set_defaults(func=cmd_encryption_rotate)

    re_ = sub.add_parser("reembed", help="build a new embedding version and switch to it")
    data_arg(re_)
    backend_args(re_)
    re_.add_argument("--model", required=True, help="sentence-transformers model directory or name")
    re_.set_defaults(func=cmd_reembed)

    rb = sub.add_parser("rollback", help="switch back to the previous embedding version")
    data_arg(rb)
    backend_args(rb)
    rb.set_defaults(func=cmd_rollback)

    e = sub.add_parser("eval", help="measure every method on an evaluation data set")
    e.add_argument("protocol", choices=["cranfield", "locomo", "movielens"])
    _eval_common(e)
    e.add_argument(
        "--methods", help="comma-separated subset of bm25,vector,hybrid,personalized,..."
    )
    e.add_argument("--reranker", help="a saved sentence-transformers cross-encoder directory")
    e.add_argument("--format", choices=["text", "markdown"], default="text")
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("tune", help="coordinate search over the scoring settings")
    t.add_argument("protocol", choices=["movielens", "locomo"])
    _eval_common(t)
    t.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="replace or add one parameter's values in the grid (repeatable)",
    )
    t.add_argument("--params", help="comma-separated parameters to search (default: the grid's)")
    t.add_argument("--rounds", type=int, default=2, help="passes over the parameters")
    t.add_argument(
        "--min-gain", type=float, default=0.01, help="relative gain needed to move (0.01 = 1%%)"
    )
    t.add_argument("--quiet", action="store_true", help="do not print every point tried")
    t.set_defaults(func=cmd_tune)

    from pertinent.server.cli import register as register_server

    register_server(sub)  # serve, keys, mcp (docs/server.md)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("LANCEDB_LOG", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except PertinentError as exc:
        width = min(100, shutil.get_terminal_size().columns)
        print(textwrap.fill(f"pertinent: {type(exc).__name__}: {exc}", width), file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
