"""Count findings and command transitions when — and only when — their transaction commits.

Listening on the session factory catches every path that writes them (ingest, operator
overrides, acknowledgements, approvals) without each one calling the metrics.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session, sessionmaker

from rlkeel.server.db.models import CommandRecord, FindingRecord
from rlkeel.server.metrics.service import ServiceMetrics

_KEY = "rlkeel_metrics_pending"


def _pending(session: Session) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    found = session.info.get(_KEY)
    if found is None:
        found = session.info[_KEY] = ([], [])
    return found  # type: ignore[no-any-return]


def _after_flush(session: Session, _context: Any) -> None:
    # Runs with the pre-flush `new`/`dirty` sets and attribute histories still in place.
    findings, commands = None, None
    for obj in session.new:
        if isinstance(obj, FindingRecord):
            findings, commands = _pending(session)
            findings.append((obj.detector, obj.severity))
        elif isinstance(obj, CommandRecord):
            findings, commands = _pending(session)
            commands.append((obj.kind, obj.origin, obj.status))
    for obj in session.dirty:
        if isinstance(obj, CommandRecord):
            added = inspect(obj).attrs.status.history.added
            if added:
                findings, commands = _pending(session)
                commands.append((obj.kind, obj.origin, added[-1]))


def install_session_events(session_factory: sessionmaker[Session], metrics: ServiceMetrics) -> None:
    def after_commit(session: Session) -> None:
        found = session.info.pop(_KEY, None)
        if found is not None:
            metrics.observe_committed(*found)

    def after_rollback(session: Session) -> None:
        session.info.pop(_KEY, None)

    event.listen(session_factory, "after_flush", _after_flush)
    event.listen(session_factory, "after_commit", after_commit)
    event.listen(session_factory, "after_rollback", after_rollback)
