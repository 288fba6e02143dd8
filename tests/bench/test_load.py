"""bench/load.py's accounting: a tiny run of two trainers, every report stored exactly once,
and the check itself sees a lost report and extra sample rows."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from load import Bodies, check_exactly_once, run_load  # noqa: E402

STEPS = 3
SAMPLES = 32


def test_two_trainers_store_every_report_exactly_once(live_server, tokens, settings) -> None:  # type: ignore[no-untyped-def]
    result = asyncio.run(run_load(
        live_server.url, tokens.trainer, settings.database_url, trainers=2, steps=STEPS,
        mode="flat", bodies=Bodies(SAMPLES, variants=2), resend=0.5,
    ))  # fmt: skip

    a = result.accounting
    assert (a.expected_reports, a.stored_reports) == (2 * STEPS * 2, 2 * STEPS * 2)
    assert (a.missing, a.duplicated, a.unexpected, a.bad_sample_counts) == (0, 0, 0, 0)
    assert result.ok and result.failed_reports == 0 and result.error_answers == {}
    assert result.resent > 0 and result.resend_mismatches == 0  # repeats answered, not stored
    assert result.latency_ms["rollout"]["n"] == result.latency_ms["update"]["n"] == 2 * STEPS
    assert result.reports_per_s > 0


def test_the_accounting_sees_a_lost_report_and_extra_rows(live_server, tokens, settings) -> None:  # type: ignore[no-untyped-def]
    url = settings.database_url
    result = asyncio.run(run_load(live_server.url, tokens.trainer, url, trainers=1,
                                  steps=STEPS, mode="flat", bodies=Bodies(SAMPLES, variants=1)))  # fmt: skip
    assert result.ok
    run_id = _only_run(url)
    assert check_exactly_once(url, [run_id], STEPS, SAMPLES).exactly_once
    more = check_exactly_once(url, [run_id], STEPS - 1, SAMPLES)  # stored, never "sent"
    assert (more.unexpected, more.exactly_once) == (2, False)

    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM steps WHERE run_id = %s AND step = 1 AND phase = 'update'",
                     (run_id,))  # fmt: skip
    lost = check_exactly_once(url, [run_id], STEPS, SAMPLES)
    assert (lost.missing, lost.stored_reports, lost.exactly_once) == (1, 2 * STEPS - 1, False)

    with psycopg.connect(url) as conn:  # a rollout's samples written twice
        conn.execute(
            "INSERT INTO samples (run_id, step, sample_id, group_id, reward, advantage, length,"
            " truncated, dropped) SELECT run_id, step, sample_id, group_id, reward, advantage,"
            " length, truncated, dropped FROM samples WHERE run_id = %s AND step = 2",
            (run_id,),
        )  # fmt: skip
    doubled = check_exactly_once(url, [run_id], STEPS, SAMPLES)
    assert doubled.bad_sample_counts == 1 and not doubled.exactly_once


def _only_run(url: str) -> str:
    with psycopg.connect(url) as conn:
        (run_id,) = conn.execute("SELECT id FROM runs").fetchone()  # type: ignore[misc]
    return str(run_id)
