"""Writing and reading step reports and their samples."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from rlkeel.client.schemas import CANONICAL_STEP_METRICS, SampleRead, SampleStats, StepRead, Verdict
from rlkeel.server.db.models import SAMPLE_FLOAT_FIELDS, SampleRecord, StepRecord
from rlkeel.server.steps.values import nonfinite_label, overlay, split_metrics

SAMPLE_COLUMNS = (
    "run_id", "step", "sample_id", "group_id", "reward", "advantage", "length",
    "truncated", "kl", "log_ratio_max", "entropy", "repetition", "extra", "nonfinite", "flags",
    "dropped",
)  # fmt: skip
SAMPLE_COPY_TYPES = (
    "varchar", "int8", "varchar", "varchar", "float8", "float8", "int4", "bool", "float8",
    "float8", "float8", "float8", "jsonb", "jsonb", "jsonb", "bool",
)  # fmt: skip


def find_step(session: Session, run_id: str, step: int, phase: str) -> StepRecord | None:
    stmt = select(StepRecord).where(
        StepRecord.run_id == run_id, StepRecord.step == step, StepRecord.phase == phase
    )
    return session.scalars(stmt).one_or_none()


def stored_verdict(run_id: Any, step: Any, phase: Any) -> Any:
    """The stored verdict of (run, step, phase) as a scalar subquery (NULL when none); the
    arguments may be bind parameters."""
    return (
        select(StepRecord.verdict)
        .where(StepRecord.run_id == run_id, StepRecord.step == step, StepRecord.phase == phase)
        .scalar_subquery()
    )


def insert_step(
    session: Session,
    *,
    run_id: str,
    step: int,
    phase: str,
    algorithm: str,
    metrics: dict[str, float],
    sample_count: int,
    verdict: Verdict,
) -> int | None:
    """Insert the step row; None when (run, step, phase) exists already (a concurrent twin)."""
    columns, extra, nonfinite = split_metrics(metrics)
    values: dict[str, Any] = {
        "run_id": run_id, "step": step, "phase": phase, "algorithm": algorithm,
        "sample_count": sample_count, "extra_metrics": extra, "nonfinite": nonfinite,
        "verdict": verdict.model_dump(mode="json"),
    }  # fmt: skip
    values.update((name, columns.get(name)) for name in CANONICAL_STEP_METRICS)
    connection = session.connection()  # Core, not the ORM's bulk-DML path (~1 ms per report)
    stmt = _insert_step_statement(connection.dialect.name)
    return connection.execute(stmt, {f"v_{k}": v for k, v in values.items()}).scalar_one_or_none()


@functools.cache
def _insert_step_statement(dialect: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id, every value a parameter `v_<column>`:
    built once per dialect (building it on every report cost about as much as running it)."""
    make = pg_insert if dialect == "postgresql" else sqlite_insert
    table = StepRecord.__table__
    names = ("run_id", "step", "phase", "algorithm", "sample_count", "extra_metrics",
             "nonfinite", "verdict", *CANONICAL_STEP_METRICS)  # fmt: skip
    return (
        make(table)
        .values({name: bindparam(f"v_{name}") for name in names})
        .on_conflict_do_nothing(index_elements=["run_id", "step", "phase"])
        .returning(table.c.id)
    )


def _sample_rows(run_id: str, step: int, samples: Sequence[SampleStats]) -> list[tuple[Any, ...]]:
    """Rows in SAMPLE_COLUMNS order, without flags and not dropped (`mark_samples` sets those
    after the detectors ran). This is the hot path of ingest: keep it flat."""
    fast = _plain_sample_rows(run_id, step, samples)
    if fast is not None:
        return fast
    rows = []
    for s in samples:
        floats = (s.reward, s.advantage, s.kl, s.log_ratio_max, s.entropy, s.repetition)
        nonfinite: dict[str, str] | None = None
        for name, value in zip(SAMPLE_FLOAT_FIELDS, floats, strict=True):
            # x - x is 0.0 for every finite x and NaN for NaN and ±inf.
            if value is not None and value - value != 0.0:
                nonfinite = nonfinite or {}
                nonfinite[name] = nonfinite_label(value) or "NaN"
        extra = s.extra or None
        if extra:
            extra, nonfinite = _clean_extra(extra, nonfinite)
        rows.append((
            run_id, step, s.sample_id, s.group_id, floats[0], floats[1],
            s.length, s.truncated, floats[2], floats[3], floats[4], floats[5],
            extra, nonfinite, None, False,
        ))  # fmt: skip
    return rows


assert SAMPLE_FLOAT_FIELDS == ("reward", "advantage", "kl", "log_ratio_max", "entropy",
                               "repetition")  # fmt: skip


def _plain_sample_rows(
    run_id: str, step: int, samples: Sequence[SampleStats]
) -> list[tuple[Any, ...]] | None:
    """The rows built column by column, for the usual report: every number finite (or absent)
    and no extras. None for any other report (then `_sample_rows` goes sample by sample)."""
    if any(s.extra for s in samples):
        return None
    columns = [[getattr(s, name) for s in samples] for name in SAMPLE_FLOAT_FIELDS]
    if not all(map(_all_finite, columns)):
        return None
    reward, advantage, kl, log_ratio_max, entropy, repetition = columns  # SAMPLE_FLOAT_FIELDS
    n = len(samples)
    return list(zip(
        repeat(run_id, n), repeat(step, n), [s.sample_id for s in samples],
        [s.group_id for s in samples], reward, advantage, [s.length for s in samples],
        [s.truncated for s in samples], kl, log_ratio_max, entropy, repetition,
        repeat(None, n), repeat(None, n), repeat(None, n), repeat(False, n), strict=False,
    ))  # fmt: skip


def _all_finite(column: list[float | None]) -> bool:
    """Whether every number in the column is finite (None is absent, not a number). One C-level
    sum: NaN and ±inf make it non-finite; finite numbers keep it finite unless it overflows, and
    then this says False and the caller takes the slow, exact path."""
    if None in column:
        column = [v for v in column if v is not None]
    return math.isfinite(sum(column))  # type: ignore[arg-type]


def _clean_extra(
    extra: dict[str, Any], nonfinite: dict[str, str] | None
) -> tuple[dict[str, Any], dict[str, str] | None]:
    """JSON cannot hold NaN/±inf: a top-level non-finite extra is stored as null and remembered
    in `nonfinite` as `extra.<key>`; deeper ones become their label strings ("NaN", ...)."""
    if all(not isinstance(v, (float, dict, list)) for v in extra.values()):
        return extra, nonfinite
    cleaned: dict[str, Any] = {}
    for key, value in extra.items():
        if isinstance(value, float) and (label := nonfinite_label(value)) is not None:
            nonfinite = {**(nonfinite or {}), f"extra.{key}": label}
            cleaned[key] = None
        else:
            cleaned[key] = _labels_for_nonfinite(value)
    return cleaned, nonfinite


def _labels_for_nonfinite(value: Any) -> Any:
    if isinstance(value, float):
        return nonfinite_label(value) or value
    if isinstance(value, dict):
        return {k: _labels_for_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_labels_for_nonfinite(v) for v in value]
    return value


@functools.cache
def _copy_samples_sql() -> Any:
    """The COPY statement, composed with psycopg.sql (identifiers quoted, never string-built)."""
    from psycopg import sql

    columns = sql.SQL(", ").join(sql.Identifier(c) for c in SAMPLE_COLUMNS)
    return sql.SQL("COPY samples ({}) FROM STDIN (FORMAT BINARY)").format(columns)


def _copy_samples(raw: Any, run_id: str, step: int, samples: Sequence[SampleStats]) -> None:
    """The samples, without flags, in one binary COPY with declared types on a psycopg
    connection (its jsonb dumper encodes the dicts)."""
    rows = _sample_rows(run_id, step, samples)
    with raw.cursor() as cursor, cursor.copy(_copy_samples_sql()) as copy:
        copy.set_types(SAMPLE_COPY_TYPES)
        for row in rows:
            copy.write_row(row)


def _insert_samples(
    session: Session, run_id: str, step: int, samples: Sequence[SampleStats]
) -> None:
    """The samples, without flags, in one multi-row INSERT (SQLite)."""
    rows = _sample_rows(run_id, step, samples)
    session.execute(insert(SampleRecord), [dict(zip(SAMPLE_COLUMNS, r, strict=True)) for r in rows])


_COPY_THREADS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="rlkeel-copy")
"""Runs sample COPYs while the request's own thread evaluates the report (one per request at
a time; requests are capped well below this by the database pool)."""


@contextlib.contextmanager
def samples_written_meanwhile(
    session: Session, *, run_id: str, step: int, samples: Sequence[SampleStats]
) -> Iterator[None]:
    """Write the samples, without flags, while the body runs; `mark_samples` adds the flags
    after. On PostgreSQL the COPY runs on a helper thread over this session's connection, so
    PostgreSQL stores the rows while the detectors compute (a 1,024-sample COPY is ~8 ms of
    the database's time); the body must not use the session meanwhile. Elsewhere the rows
    are written first. The rows are in the session's transaction either way."""
    if not samples:
        yield
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        _insert_samples(session, run_id, step, samples)
        yield
        return
    raw = connection.connection.driver_connection
    assert raw is not None
    copying = _COPY_THREADS.submit(_copy_samples, raw, run_id, step, samples)
    try:
        yield
    except BaseException:
        # The connection is busy until the COPY ends: wait for it; the body's error wins.
        with contextlib.suppress(Exception):
            copying.result()
        raise
    copying.result()


def mark_samples(
    session: Session, *, run_id: str, step: int, flags: dict[str, list[str]], dropped: set[str]
) -> None:
    """Set the detector flags and the dropped mark of the step's samples written without them
    (only the flagged or dropped ones: usually a few, one round trip)."""
    marked = [{"mark_run": run_id, "mark_step": step, "sid": sid,
               "new_flags": flags.get(sid) or None, "new_dropped": sid in dropped}
              for sid in {*flags, *dropped}]  # fmt: skip
    if marked:
        session.connection().execute(_MARK_SAMPLES, marked)


_MARK_SAMPLES = (
    update(SampleRecord.__table__)
    .where(SampleRecord.run_id == bindparam("mark_run"), SampleRecord.step == bindparam("mark_step"),
           SampleRecord.sample_id == bindparam("sid"))
    .values(flags=bindparam("new_flags"), dropped=bindparam("new_dropped"))
)  # fmt: skip


def step_to_schema(record: StepRecord) -> StepRead:
    metrics: dict[str, float | None] = {
        name: getattr(record, name) for name in CANONICAL_STEP_METRICS
    }
    metrics.update(record.extra_metrics or {})
    overlay(metrics, record.nonfinite or {})
    clean = {k: v for k, v in metrics.items() if v is not None}
    return StepRead(
        run_id=record.run_id,
        step=record.step,
        phase=record.phase,
        algorithm=record.algorithm,
        metrics=clean,
        sample_count=record.sample_count,
        verdict=Verdict.model_validate(record.verdict),
        created_at=record.created_at,
    )


def list_steps(
    session: Session, run_id: str, *, after: int | None, limit: int, phase: str | None
) -> tuple[list[StepRecord], int | None]:
    """Up to `limit` steps (both phases of each) after step `after`; and the next cursor."""
    stmt = select(StepRecord).where(StepRecord.run_id == run_id)
    if after is not None:
        stmt = stmt.where(StepRecord.step > after)
    if phase is not None:
        stmt = stmt.where(StepRecord.phase == phase)
    rows = list(
        session.scalars(stmt.order_by(StepRecord.step, StepRecord.phase).limit(2 * limit + 2))
    )
    steps_seen: list[int] = []
    page: list[StepRecord] = []
    for row in rows:
        if not steps_seen or steps_seen[-1] != row.step:
            if len(steps_seen) == limit:
                return page, steps_seen[-1]
            steps_seen.append(row.step)
        page.append(row)
    return page, None


def list_samples(session: Session, run_id: str, step: int) -> list[SampleRead]:
    stmt = (
        select(SampleRecord)
        .where(SampleRecord.run_id == run_id, SampleRecord.step == step)
        .order_by(SampleRecord.id)
    )
    out = []
    for r in session.scalars(stmt):
        values: dict[str, float | None] = {n: getattr(r, n) for n in SAMPLE_FLOAT_FIELDS}
        nonfinite = r.nonfinite or {}
        overlay(values, {k: v for k, v in nonfinite.items() if not k.startswith("extra.")})
        extra = dict(r.extra or {})
        for key, label in nonfinite.items():
            if key.startswith("extra."):
                extra[key[len("extra."):]] = label  # as on the wire: "NaN", "Infinity", ...
        out.append(
            SampleRead(
                step=r.step,
                sample_id=r.sample_id,
                group_id=r.group_id,
                length=r.length,
                truncated=r.truncated,
                extra=extra,
                flags=r.flags or [],
                dropped=r.dropped,
                **values,
            )  # fmt: skip
        )
    return out
