"""Operator commands over the HTTP API: `rlkeel runs`, `findings`, `commands`, `command`,
`approve`, `reject`, `automation`, `ack`, `snooze`, `policy`, `audit`.

They need only the client (a bare `pip install rlkeel`). The server is `--server` or
RLKEEL_SERVER_URL (default http://127.0.0.1:8000); the token is `--token` or RLKEEL_TOKEN.
Every command prints a table, or JSON with `--json`; errors print the service's sentence and
exit with status 1 (2 for bad usage).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:8000"
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageError(Exception):
    """Bad arguments: exit status 2."""


# --------------------------------------------------------------------------- parsing helpers


def parse_value(text: str) -> Any:
    """A `key=value` value: JSON when it parses (numbers, true, {...}), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignments(pairs: Sequence[str]) -> dict[str, Any]:
    """`["to=gspo", "overrides.clip_high=0.28"]` → `{"to": "gspo", "overrides": {...}}`."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"expected key=value, got {pair!r}")
        set_path(out, key, parse_value(value))
    return out


def set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    target[last] = value


def parse_duration(text: str) -> int:
    """Seconds from `600`, `90s`, `10m`, `2h` or `1d`."""
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) <= 0:
        raise UsageError(f"expected a duration like 600, 10m, 2h or 1d, got {text!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


# --------------------------------------------------------------------------- output


def _dump(items: Any) -> Any:
    if isinstance(items, list):
        return [_dump(i) for i in items]
    return items.model_dump(mode="json") if hasattr(items, "model_dump") else items


def _print_json(items: Any) -> None:
    print(json.dumps(_dump(items), indent=2, sort_keys=False))


def _table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [[("" if c is None else str(c)) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def _print_commands(commands: list[Any]) -> None:
    _table([[c.id, c.kind.value, json.dumps(c.params, separators=(",", ":")), c.origin.value,
             c.status.value, c.effective_step, c.applied_step, c.reason.get("text", "")]
            for c in commands],
           ["ID", "KIND", "PARAMS", "ORIGIN", "STATUS", "FROM STEP", "APPLIED AT", "REASON"])  # fmt: skip


def _print_findings(findings: list[Any]) -> None:
    _table([[f.id, f.step, f.detector, f.severity.value, f.status.value, f.value, f.threshold,
             _when(f.snoozed_until), f.message] for f in findings],
           ["ID", "STEP", "DETECTOR", "SEVERITY", "STATUS", "VALUE", "THRESHOLD",
            "SNOOZED UNTIL", "MESSAGE"])  # fmt: skip


# --------------------------------------------------------------------------- commands


def _runs(client: Any, args: argparse.Namespace) -> Any:
    runs = client.list_runs(project=args.project, status=args.status, limit=args.limit)
    if args.json:
        return runs
    _table([[r.id, r.name, r.project, r.current_algorithm.value, r.automation.value,
             r.status.value, r.last_step, _when(r.last_report_at)] for r in runs],
           ["ID", "NAME", "PROJECT", "ALGORITHM", "AUTOMATION", "STATUS", "LAST STEP",
            "LAST REPORT"])  # fmt: skip
    return None


def _findings(client: Any, args: argparse.Namespace) -> Any:
    findings = client.list_findings(args.run, severity=args.severity, status=args.status,
                                    limit=args.limit)  # fmt: skip
    if args.json:
        return findings
    _print_findings(findings)
    return None


def _commands(client: Any, args: argparse.Namespace) -> Any:
    commands = client.list_commands(args.run, args.status or None, limit=args.limit)
    if args.json:
        return commands
    _print_commands(commands)
    return None


def _command(client: Any, args: argparse.Namespace) -> Any:
    from rlkeel.client import CommandCreate

    body = CommandCreate(kind=args.kind, params=parse_assignments(args.params),
                         reason=args.reason, effective_step=args.effective_step)  # fmt: skip
    return [client.issue_command(args.run, body)]


def _approve(client: Any, args: argparse.Namespace) -> Any:
    return [client.approve_command(args.id, note=args.note)]


def _reject(client: Any, args: argparse.Namespace) -> Any:
    return [client.reject_command(args.id, note=args.note)]


def _automation(client: Any, args: argparse.Namespace) -> Any:
    run = client.set_automation(args.run, args.mode)
    if args.json:
        return run
    print(f"run {run.id}: automation {run.automation.value}")
    return None


def _ack(client: Any, args: argparse.Namespace) -> Any:
    from rlkeel.client import FindingAck

    return [client.ack_finding(args.id, FindingAck(note=args.note))]


def _snooze(client: Any, args: argparse.Namespace) -> Any:
    from rlkeel.client import FindingAck

    ack = FindingAck(snooze_seconds=parse_duration(args.duration), note=args.note)
    return [client.ack_finding(args.id, ack)]


def _policy(client: Any, args: argparse.Namespace) -> Any:
    if args.file and args.set:
        raise UsageError("give --file or --set, not both")
    if args.file:
        try:
            policy = json.loads(Path(args.file).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read policy file {args.file}: {exc}") from None
        return client.put_policy(args.run, policy)
    if args.set:
        policy = client.get_policy(args.run)
        for key, value in parse_assignments(args.set).items():
            _merge(policy, key, value)
        return client.put_policy(args.run, policy)
    return client.get_policy(args.run)


def _merge(target: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, dict) and isinstance(target.get(key), dict):
        for k, v in value.items():
            _merge(target[key], k, v)
    else:
        target[key] = value


def _audit(client: Any, args: argparse.Namespace) -> Any:
    entries = client.list_audit(target_type=args.target_type, target_id=args.target_id,
                                after=args.after, limit=args.limit)  # fmt: skip
    if args.json:
        return entries
    _table([[e.id, _when(e.at), e.actor, e.action, f"{e.target_type}:{e.target_id}",
             _change(e.before, e.after)] for e in entries],
           ["ID", "AT (UTC)", "WHO", "ACTION", "TARGET", "CHANGE"])  # fmt: skip
    return None


def _change(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """The keys whose value changed, `key: old → new` (whole objects are in `--json`)."""
    before, after = before or {}, after or {}
    parts = [f"{k}: {_short(before.get(k))} → {_short(after.get(k))}"
             for k in sorted(set(before) | set(after))
             if before.get(k) != after.get(k) and k not in ("updated_at", "created_at")]  # fmt: skip
    return "; ".join(parts)


def _short(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------- wiring


def _run_with_client(action: Callable[[Any, argparse.Namespace], Any]) -> Callable[..., int]:
    def handler(args: argparse.Namespace) -> int:
        from pydantic import ValidationError

        from rlkeel.client import APIError, Client, RlkeelError

        token = args.token or os.environ.get("RLKEEL_TOKEN")
        if not token:
            print("rlkeel: no token: pass --token or set RLKEEL_TOKEN", file=sys.stderr)
            return 2
        server = args.server or os.environ.get("RLKEEL_SERVER_URL") or DEFAULT_SERVER
        try:
            with Client(server, token=token, timeout=args.timeout) as client:
                result = action(client, args)
        except UsageError as exc:
            print(f"rlkeel: {exc}", file=sys.stderr)
            return 2
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "input"
            print(f"rlkeel: {where}: {first['msg']}", file=sys.stderr)
            return 2
        except APIError as exc:
            fields = f" (fields: {', '.join(exc.fields)})" if exc.fields else ""
            print(f"rlkeel: {exc.status_code} {exc.error}: {exc.detail}{fields}", file=sys.stderr)
            return 1
        except RlkeelError as exc:
            print(f"rlkeel: cannot reach {server}: {exc}", file=sys.stderr)
            return 1
        if result is None:
            return 0
        if isinstance(result, list) and not getattr(args, "json", False):
            first_item = result[0] if result else None
            if first_item is not None and hasattr(first_item, "kind"):
                _print_commands(result)
            elif first_item is not None and hasattr(first_item, "detector"):
                _print_findings(result)
            else:
                _print_json(result)
        else:
            _print_json(result)
        return 0

    return handler


def _add(sub: argparse._SubParsersAction[Any], name: str, help_text: str,
         action: Callable[[Any, argparse.Namespace], Any], *, json_flag: bool = True
         ) -> argparse.ArgumentParser:  # fmt: skip
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--server", help=f"service URL (RLKEEL_SERVER_URL, default {DEFAULT_SERVER})")
    p.add_argument("--token", help="API token (RLKEEL_TOKEN)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_run_with_client(action))
    return p


def register(sub: argparse._SubParsersAction[Any]) -> None:
    from rlkeel.client.schemas import (
        AutomationMode,
        CommandKind,
        CommandStatus,
        FindingStatus,
        RunStatus,
        Severity,
    )

    p = _add(sub, "runs", "list runs, newest first", _runs)
    p.add_argument("--project", help="only this project")
    p.add_argument("--status", choices=[s.value for s in RunStatus], help="only this status")
    p.add_argument("--limit", type=int, default=100)

    p = _add(sub, "findings", "a run's detector findings", _findings)
    p.add_argument("run", help="run id")
    p.add_argument("--severity", choices=[s.value for s in Severity])
    p.add_argument("--status", choices=[s.value for s in FindingStatus])
    p.add_argument("--limit", type=int, default=200)

    p = _add(sub, "commands", "a run's commands (e.g. --status held)", _commands)
    p.add_argument("run", help="run id")
    p.add_argument("--status", action="append", choices=[s.value for s in CommandStatus],
                   help="only these statuses (repeatable)")  # fmt: skip
    p.add_argument("--limit", type=int, default=200)

    p = _add(sub, "command", "issue a command by hand: rlkeel command RUN scale_lr factor=0.5",
             _command)  # fmt: skip
    p.add_argument("run", help="run id")
    p.add_argument("kind", choices=[k.value for k in CommandKind])
    p.add_argument("params", nargs="*", metavar="KEY=VALUE",
                   help="params of the kind; values are JSON when they parse (to=gspo factor=0.5 "
                   "overrides.clip_high=0.28)")  # fmt: skip
    p.add_argument("--reason", help="why (kept with the command and in the audit log)")
    p.add_argument("--effective-step", type=int, help="first step it applies at")

    for name, action, text in (("approve", _approve, "approve a held command"),
                               ("reject", _reject, "refuse a held command")):  # fmt: skip
        p = _add(sub, name, text, action)
        p.add_argument("id", type=int, help="command id")
        p.add_argument("--note", help="why (kept in the audit log)")

    p = _add(sub, "automation", "set a run's automation mode", _automation)
    p.add_argument("run", help="run id")
    p.add_argument("mode", choices=[m.value for m in AutomationMode])

    p = _add(sub, "ack", "acknowledge a finding", _ack)
    p.add_argument("id", type=int, help="finding id")
    p.add_argument("--note", help="kept in the audit log")

    p = _add(sub, "snooze", "silence a finding's detector for its run: rlkeel snooze ID 2h", _snooze)
    p.add_argument("id", type=int, help="finding id")
    p.add_argument("duration", help="600, 90s, 10m, 2h or 1d")
    p.add_argument("--note", help="kept in the audit log")

    p = _add(sub, "policy", "print a run's policy, or change it (--set key=value, --file)",
             _policy, json_flag=False)  # fmt: skip
    p.add_argument("run", help="run id")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change one field, dotted for nested ones "
                   "(detectors.kl_spike.threshold=8); repeatable")  # fmt: skip
    p.add_argument("--file", help="replace the policy with this JSON file")

    p = _add(sub, "audit", "who did what, when (operator)", _audit)
    p.add_argument("--target-type", choices=["run", "command", "finding", "webhook"])
    p.add_argument("--target-id")
    p.add_argument("--after", type=int, help="only entries after this id")
    p.add_argument("--limit", type=int, default=200)
