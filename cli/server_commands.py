"""`rlkeel serve`, `rlkeel db ...`, `rlkeel keys create`."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _need_server() -> None:
    try:
        import fastapi  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"this command needs the server extra: pip install 'rlkeel[server]' ({exc})"
        ) from exc


def register(sub: argparse._SubParsersAction[Any]) -> None:
    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--host", help="bind address (RLKEEL_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (RLKEEL_PORT, default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument(
        "--migrate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="upgrade the schema first (default: yes on SQLite, no on PostgreSQL)",
    )
    serve.set_defaults(handler=_serve)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db_sub.add_parser("upgrade", help="apply migrations")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(handler=_db_upgrade)
    down = db_sub.add_parser("downgrade", help="revert migrations")
    down.add_argument("revision")
    down.set_defaults(handler=_db_downgrade)
    login = db_sub.add_parser(
        "reader-login",
        help="create or update a read-only login for dashboards (PostgreSQL; password from "
        "RLKEEL_READER_PASSWORD)",
    )
    login.add_argument("name", help="the login role, e.g. grafana")
    login.set_defaults(handler=_db_reader_login)
    cur = db_sub.add_parser("current", help="print the current revision")
    cur.set_defaults(handler=_db_current)

    backtest = sub.add_parser(
        "backtest", help="replay a stored run through the detectors and policy",
        description="Replay a stored run through the same detectors and policy as live ingest "
        "and print the findings and commands, next to what the live run produced.",
    )  # fmt: skip
    backtest.add_argument("run", help="run id")
    backtest.add_argument("--policy", help="a policy JSON file (default: the run's own policy)")
    backtest.add_argument("--json", action="store_true", help="print JSON instead of tables")
    backtest.set_defaults(handler=_backtest)

    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create a key; prints the token once, alone")
    create.add_argument("--role", required=True, choices=["viewer", "trainer", "operator", "admin"])
    create.add_argument("--name", default="cli")
    create.set_defaults(handler=_keys_create)


def _settings() -> Any:
    _need_server()
    from pydantic import ValidationError

    from rlkeel.server.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        # e.g. RLKEEL_ENVIRONMENT=production with default secrets: say why, no traceback.
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise SystemExit(f"rlkeel: invalid settings: {reasons}") from None


def _db_upgrade(args: argparse.Namespace) -> int:
    from rlkeel.server.db.migrate import upgrade

    settings = _settings()
    upgrade(settings, args.revision)
    print(f"database at {args.revision}", file=sys.stderr)
    return 0


def _db_downgrade(args: argparse.Namespace) -> int:
    from rlkeel.server.db.migrate import downgrade

    downgrade(_settings(), args.revision)
    return 0


def _db_reader_login(args: argparse.Namespace) -> int:
    import os

    from rlkeel.server.db.engine import make_engine
    from rlkeel.server.db.reader_role import ensure_reader_login

    password = os.environ.get("RLKEEL_READER_PASSWORD", "")
    if not password:
        print("set RLKEEL_READER_PASSWORD (never on the command line)", file=sys.stderr)
        return 2
    engine = make_engine(_settings())
    try:
        created = ensure_reader_login(engine, args.name, password)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"{'created' if created else 'updated'} read-only login {args.name}", file=sys.stderr)
    return 0


def _db_current(_: argparse.Namespace) -> int:
    from rlkeel.server.db.engine import make_engine
    from rlkeel.server.db.schema_check import current_and_head

    current, head = current_and_head(make_engine(_settings()))
    print(f"current: {current or 'none'} head: {head}")
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from rlkeel.server.auth import Role, create_api_key
    from rlkeel.server.db.engine import make_engine, make_session_factory

    settings = _settings()
    _ensure_schema(settings, migrate=None)
    factory = make_session_factory(make_engine(settings))
    with factory.begin() as session:
        token = create_api_key(session, role=Role(args.role), name=args.name)
    print(token)
    return 0


def _ensure_schema(settings: Any, *, migrate: bool | None) -> None:
    from rlkeel.server.db.engine import make_engine
    from rlkeel.server.db.migrate import upgrade
    from rlkeel.server.db.schema_check import current_and_head

    if migrate is None:
        migrate = settings.is_sqlite
    if migrate:
        upgrade(settings)
        return
    current, head = current_and_head(make_engine(settings))
    if current != head:
        raise SystemExit(
            f"the database schema is at {current or 'nothing'}, not {head}: run `rlkeel db upgrade`"
        )


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    if args.host:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    _ensure_schema(settings, migrate=args.migrate)
    print(f"rlkeel serving on http://{settings.host}:{settings.port} "
          f"(store: {'SQLite' if settings.is_sqlite else 'PostgreSQL'})", file=sys.stderr)  # fmt: skip
    if args.workers > 1:
        uvicorn.run("rlkeel.server.asgi:app", host=settings.host, port=settings.port,
                    workers=args.workers, log_level=settings.log_level)  # fmt: skip
    else:
        from rlkeel.server.app import create_app

        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    log_level=settings.log_level)  # fmt: skip
    return 0


def _backtest(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from pydantic import ValidationError

    from rlkeel.server import backtest
    from rlkeel.server.db.engine import make_engine, make_session_factory
    from rlkeel.server.runs.service import get_run

    settings = _settings()
    override = None
    if args.policy:
        try:
            override = json.loads(Path(args.policy).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"cannot read policy file {args.policy}: {exc}", file=sys.stderr)
            return 2
    engine = make_engine(settings)
    with make_session_factory(engine)() as session:
        try:
            run = get_run(session, args.run)
            policy = backtest.run_policy(run, override)
        except ValidationError as exc:
            print(f"invalid policy in {args.policy}: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # noqa: BLE001 - NotFound and friends: say it plainly
            print(f"backtest: {getattr(exc, 'detail', exc)}", file=sys.stderr)
            return 2
        print(f"replaying run {run.id} ({run.name})...", file=sys.stderr)
        replayed = backtest.replay(session, run, policy)
        stored = backtest.live(session, run.id)
    engine.dispose()
    same = replayed.findings == stored.findings and replayed.commands == stored.commands
    if args.json:
        print(json.dumps({
            "run": run.id,
            "findings": [f.__dict__ for f in replayed.findings],
            "commands": [c.__dict__ for c in replayed.commands],
            "drops": replayed.drops, "skips": replayed.skips,
            "live": {"findings": len(stored.findings), "commands": len(stored.commands)},
            "same_as_live": same,
        }, default=list, indent=2))  # fmt: skip
        return 0
    print(f"{'step':>6} {'phase':<8} {'detector':<28} {'severity':<9} samples")
    for f in replayed.findings:
        print(f"{f.step:>6} {f.phase:<8} {f.detector:<28} {f.severity:<9} {len(f.sample_ids)}")
    print()
    print(f"{'step':>6} {'phase':<8} {'command':<20} params")
    for c in replayed.commands:
        print(f"{c.step:>6} {c.phase:<8} {c.kind:<20} {c.params}")
    print()
    print(f"replay: {len(replayed.findings)} findings, {len(replayed.commands)} commands, "
          f"{replayed.drops} samples dropped, {replayed.skips} steps skipped")  # fmt: skip
    print(f"live:   {len(stored.findings)} findings, {len(stored.commands)} policy commands")
    print("same as live: " + ("yes" if same else "no (different policy, operator snoozes, or "
                              "a run stored before a detector change)"))  # fmt: skip
    return 0
