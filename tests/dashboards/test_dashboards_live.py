"""The dashboards against the real thing: a short real training run (the trainer on CPU, with
injected faults) reports to a real server on a loopback port, a real Prometheus (Debian's)
scrapes it with the committed config and rules, and then

- every PromQL expression of every dashboard returns data over the run,
- every SQL query (Grafana's macros substituted) returns rows on PostgreSQL, read through a
  login of the read-only role that migration 0004 creates,
- the run's series are gone once it finished, and the high-severity alert fired.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from rlkeel.server.app import create_app
from rlkeel.server.auth import Role, create_api_key
from rlkeel.server.db.migrate import upgrade
from rlkeel.server.db.reader_role import ensure_reader_login
from rlkeel.server.settings import Settings
from tests.conftest import (
    PG_ADMIN_URL,
    LiveServer,
    create_pg_database,
    drop_pg_database,
    free_port,
)
from tests.dashboards.grafana_queries import dashboard_queries, substitute_promql, substitute_sql

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "dashboards" / "prometheus"

# GRPO on `sort`; looping responses are rewarded from step 1 (drops, findings) and the learning
# rate is blown up at step 3, which collapses the entropy: a high-severity finding and a rollback
# that approval mode holds. The step budget is only a ceiling: the run is stopped by an operator
# once Prometheus has scraped what the dashboards need (a fast machine finishes eight steps
# between two scrapes, and a finished run has no series).
MIN_STEPS = 8
TRAIN_ARGS = ["--algorithm", "grpo", "--task", "sort", "--steps", "2000", "--prompts-per-step", "4",
              "--group-size", "8", "--max-new-tokens", "16", "--kl-coef", "0.01", "--seed", "0",
              "--mode", "approve", "--inject", "length_explosion@1",
              "--inject", "lr_blowup@3:1e9", "--no-progress"]  # fmt: skip


class Prometheus:
    """Debian's prometheus on a random loopback port, with the committed config and rules;
    only the target and the intervals differ."""

    def __init__(self, workdir: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus (Debian package prometheus) is required"
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
        (job,) = config["scrape_configs"]
        job["static_configs"] = [{"targets": [target]}]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 60
        while not self._ready():
            assert self.process.poll() is None, "prometheus exited; see prometheus.log"
            assert time.monotonic() < deadline, "prometheus did not get ready"
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_for_first_scrape(self, timeout_s: float = 60) -> None:
        """Until the server has been scraped once. Prometheus's first scrape comes up to ~5 s
        after it is ready; a counter's first increment before it is invisible to increase(),
        and a quick finding would then never fire the alert."""
        deadline = time.monotonic() + timeout_s
        while not self.api("query", query="up == 1")["result"]:
            assert time.monotonic() < deadline, "prometheus never scraped the server"
            time.sleep(0.2)

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@dataclass
class LiveRun:
    run_id: str
    start: float
    end: float
    prometheus: Prometheus
    reader_url: str


@pytest.fixture(scope="module")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    workdir = tmp_path_factory.mktemp("live")
    db = create_pg_database("rlkmetrics_live")
    reader = f"rlkmetrics_reader_{uuid.uuid4().hex[:8]}"
    server = prometheus = None
    try:
        settings = Settings(database_url=db.url, webhook_worker=False)
        upgrade(settings)
        app = create_app(settings)
        with app.state.session_factory.begin() as s:
            trainer = create_api_key(s, role=Role.trainer, name="live-trainer")
            operator = create_api_key(s, role=Role.operator, name="live-operator")
        ensure_reader_login(app.state.engine, reader, uuid.uuid4().hex)
        server = LiveServer(app).start()
        prometheus = Prometheus(workdir, f"127.0.0.1:{server.port}")
        prometheus.wait_for_first_scrape()
        start = time.time()
        run_id = _train(server.url, trainer, operator, workdir, prometheus)
        time.sleep(4)  # a few more scrapes: the finished run's series are gone in them
        yield LiveRun(run_id, start, time.time(), prometheus,
                      db.url.replace("postgres@", f"{reader}@", 1))  # fmt: skip
    finally:
        if prometheus is not None:
            prometheus.stop()
        if server is not None:
            server.stop()
        drop_pg_database(db)
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{reader}"')


def _train(url: str, trainer: str, operator: str, workdir: Path, prometheus: Prometheus) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLKEEL_TOKEN": trainer}
    log = (workdir / "train.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlkeel.cli.main", "train", "--server", url, "--run-name",
         "live-dashboards", "--out", str(workdir / "run"), *TRAIN_ARGS],
        env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {operator}"}) as c:
            run_id = None
            deadline = time.monotonic() + 300
            while run_id is None:
                assert proc.poll() is None, (workdir / "train.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the trainer never registered its run"
                runs = c.get("/v1/runs").json()
                run_id = runs[0]["id"] if runs else None
                time.sleep(0.2)
            # An operator override, so the audit log and operator-origin series have data.
            r = c.post(f"/v1/runs/{run_id}/commands",
                       json={"kind": "scale_lr", "params": {"factor": 0.5}, "reason": "live test"})  # fmt: skip
            assert r.status_code == 201, r.text
            _wait_for_scrapes(c, prometheus, run_id, proc, workdir)
            r = c.post(f"/v1/runs/{run_id}/commands",
                       json={"kind": "stop", "params": {}, "reason": "live test done"})  # fmt: skip
            assert r.status_code == 201, r.text
        assert proc.wait(timeout=300) == 0, (workdir / "train.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    return str(run_id)


def _wait_for_scrapes(c: httpx.Client, prometheus: Prometheus, run_id: str,
                      proc: subprocess.Popen[bytes], workdir: Path) -> None:
    """Until the run is past MIN_STEPS and every dashboard expression and the high-severity
    alert have data in Prometheus (at most 300 s; the tests then say what is missing)."""
    start = time.time()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, (workdir / "train.log").read_text()[-3000:]
        last = c.get(f"/v1/runs/{run_id}").json()["last_step"]
        if last is not None and last >= MIN_STEPS and _scraped_everything(prometheus, run_id, start):
            return
        time.sleep(1)


def _scraped_everything(prometheus: Prometheus, run_id: str, since: float) -> bool:
    now = time.time()
    exprs = [substitute_promql(q.text, run=run_id, rate_interval="5s",
                               range_=f"{math.ceil(now - since) + 5}s")
             for q in dashboard_queries() if q.kind == "promql"]  # fmt: skip
    exprs.append('ALERTS{alertname="RlkeelHighSeverityFinding",alertstate="firing"}')
    for expr in exprs:
        data = prometheus.api("query_range", query=expr, start=str(since - 60), end=str(now),
                              step="1")  # fmt: skip
        if not any(not math.isnan(float(v)) for series in data["result"]
                   for _, v in series["values"]):  # fmt: skip
            return False
    return True


def _promql_cases() -> list[Any]:
    return [pytest.param(q, id=f"{q.dashboard}:{q.where}:{i}")
            for i, q in enumerate(dashboard_queries()) if q.kind == "promql"]  # fmt: skip


def _sql_cases() -> list[Any]:
    return [pytest.param(q, id=f"{q.dashboard}:{q.where}:{i}")
            for i, q in enumerate(dashboard_queries()) if q.kind == "sql"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("query", _promql_cases())
def test_every_promql_expression_returns_data(live_run: LiveRun, query: Any) -> None:
    expr = substitute_promql(query.text, run=live_run.run_id, rate_interval="5s",
                             range_=f"{math.ceil(live_run.end - live_run.start) + 5}s")  # fmt: skip
    data = live_run.prometheus.api("query_range", query=expr, start=str(live_run.start),
                                   end=str(live_run.end), step="1")  # fmt: skip
    values = [float(v) for series in data["result"] for _, v in series["values"]]
    assert any(not math.isnan(v) for v in values), f"no data: {expr}"


@pytest.mark.slow
@pytest.mark.parametrize("query", _sql_cases())
def test_every_sql_query_returns_rows_through_the_read_only_role(live_run: LiveRun,
                                                                 query: Any) -> None:  # fmt: skip
    start = datetime.fromtimestamp(live_run.start, UTC) - timedelta(minutes=1)
    end = datetime.fromtimestamp(live_run.end, UTC) + timedelta(minutes=1)
    text = substitute_sql(query.text, run=live_run.run_id, start=start, end=end)
    with psycopg.connect(live_run.reader_url, autocommit=True) as conn:
        cur = conn.execute(text)  # type: ignore[call-overload]
        columns = [c.name for c in cur.description or []]
        rows = cur.fetchall()
    assert rows, f"no rows: {text}"
    if not query.table:  # a time series: a time column and at least one value in a series
        assert columns[0] == "time"
        assert any(v is not None for row in rows for v in row[1:]), f"only NULLs: {text}"


@pytest.mark.slow
def test_the_run_picker_offers_the_run(live_run: LiveRun) -> None:
    (variable,) = [q for q in dashboard_queries()
                   if q.where == "variable run" and q.dashboard == "rlkeel-run-overview"]  # fmt: skip
    with psycopg.connect(live_run.reader_url) as conn:
        values = [r[0] for r in conn.execute(variable.text)]  # type: ignore[call-overload]
    assert live_run.run_id in values


@pytest.mark.slow
def test_finished_run_has_no_series_and_the_alert_fired(live_run: LiveRun) -> None:
    now = live_run.prometheus.api("query", query=f'{{run="{live_run.run_id}"}}',
                                  time=str(live_run.end))  # fmt: skip
    assert now["result"] == [], "a finished run still has series"
    fired = live_run.prometheus.api(
        "query_range", query='ALERTS{alertname="RlkeelHighSeverityFinding",alertstate="firing"}',
        start=str(live_run.start), end=str(live_run.end), step="1")  # fmt: skip
    assert {s["metric"]["detector"] for s in fired["result"]} >= {"entropy_floor"}
