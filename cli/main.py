"""The `rlkeel` command line. Subcommands import their packages lazily, so a client-only
install still answers `rlkeel --help` and says which extra a subcommand needs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from rlkeel.cli import demo, operator_commands, report, server_commands

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlkeel", description="Training health with auto-intervention for RL fine-tuning."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server_commands.register(sub)
    operator_commands.register(sub)
    _register_trainer(sub)
    report.register(sub)
    demo.register(sub)
    return parser


def _register_trainer(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    try:
        from rlkeel.trainer.cli import add_train_parser
    except ImportError as exc:  # the [trainer] extra is not installed
        missing = str(exc)
        p = sub.add_parser("train", help="train a policy with RL (needs rlkeel[trainer])")

        def _missing(_: argparse.Namespace) -> int:
            print(f"rlkeel train needs the trainer extra: pip install 'rlkeel[trainer]' ({missing})",
                  file=sys.stderr)  # fmt: skip
            return 2

        p.set_defaults(handler=_missing)
        return
    add_train_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
