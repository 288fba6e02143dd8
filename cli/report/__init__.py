"""``rlkeel report RUN --out DIR``: PNG charts of a stored run (reward, KL, entropy, length,
clip fraction, grad norm) with markers at findings and commands, and a one-page
``index.html``. Needs the ``report`` extra (matplotlib)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "write_report"]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "report", help="charts and an HTML summary of a stored run",
        description="Charts (PNG) of a run's reward, KL, entropy, length, clip fraction and "
        "grad norm with markers at findings and commands, and a one-page index.html. Reads "
        "through the API with --server/--token (or RLKEEL_SERVER_URL/RLKEEL_TOKEN; a trainer, "
        "operator or admin key), else straight from the database (RLKEEL_DATABASE_URL).",
    )  # fmt: skip
    p.add_argument("run", help="run id")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--server", default=os.environ.get("RLKEEL_SERVER_URL"),
                   help="service URL (default: RLKEEL_SERVER_URL; none: read the database)")
    p.add_argument("--token", default=os.environ.get("RLKEEL_TOKEN"),
                   help="API token (default: RLKEEL_TOKEN)")
    p.set_defaults(handler=_report)


def write_report(history: Any, out: str | Path) -> Path:
    """Charts and ``index.html`` of a ``RunHistory`` into ``out``; returns the page's path."""
    from rlkeel.cli.report.charts import draw_charts
    from rlkeel.cli.report.page import write_page

    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    return write_page(history, draw_charts(history, directory), directory)


def _report(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("rlkeel report needs the report extra: pip install 'rlkeel[report]'",
              file=sys.stderr)  # fmt: skip
        return 2
    from rlkeel.cli.report.data import from_api, from_database
    from rlkeel.client import APIError, Client, TransportError

    try:
        if args.server:
            if not args.token:
                print("--server needs --token (or RLKEEL_TOKEN)", file=sys.stderr)
                return 2
            with Client(args.server, token=args.token) as client:
                history = from_api(client, args.run)
        else:
            history = from_database(args.run)
    except (APIError, TransportError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - NotFound from the database path: say it plainly
        if type(exc).__name__ == "NotFound" or getattr(exc, "status_code", None) == 404:
            print(f"report: {getattr(exc, 'detail', exc)}", file=sys.stderr)
            return 2
        raise
    page = write_report(history, args.out)
    print(page)
    return 0
