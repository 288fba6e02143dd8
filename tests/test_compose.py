"""docker-compose.yml, the Dockerfile and the server's entry point.

No Docker daemon is needed: Debian's docker-compose validates the file (`docker-compose
config`), and the entry point runs here as the container would run it — waiting for a database
that appears late, migrating, creating Grafana's read-only login, serving.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from tests.conftest import PG_ADMIN_URL, PgDatabase, _db_url, drop_pg_database, free_port

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {"POSTGRES_PASSWORD": "pg-pass-1", "RLKEEL_READER_PASSWORD": "reader-pass-2",
           "GRAFANA_ADMIN_PASSWORD": "admin-pass-3", "RLKEEL_WEBHOOK_SECRETS_KEY": "key-4"}  # fmt: skip


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose (Debian package docker-compose) is required"
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run([binary, "config"], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    r = _compose_config(SECRETS)
    assert r.returncode == 0, r.stderr
    return dict(yaml.safe_load(r.stdout))


def test_compose_file_is_valid_with_the_four_services(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {"postgres", "server", "prometheus", "grafana"}
    for name, service in config["services"].items():
        image = service.get("image", "")
        assert not image.endswith(":latest") and (":" in image), (name, image)


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_every_secret_is_a_required_variable(missing: str) -> None:
    r = _compose_config({k: v for k, v in SECRETS.items() if k != missing})
    assert r.returncode != 0 and missing in r.stderr, r.stderr


def test_no_secret_is_written_in_the_file() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for line in text.splitlines():
        if re.search(r"(PASSWORD|SECRET|KEY)\w*:", line) and not line.lstrip().startswith("#"):
            assert "${" in line, f"a secret not from the environment: {line}"


def test_postgres_healthcheck_gates_the_server(config: dict[str, Any]) -> None:
    postgres, server = config["services"]["postgres"], config["services"]["server"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert Path(server["build"]["context"]) == ROOT and (ROOT / "Dockerfile").exists()
    env = server["environment"]
    assert env["RLKEEL_ENVIRONMENT"] == "production"
    assert env["PGPASSWORD"] == SECRETS["POSTGRES_PASSWORD"]


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    out = {}
    for v in service["volumes"]:
        source, target, mode = (v.split(":") + ["rw"])[:3] if isinstance(v, str) else (
            v["source"], v["target"], "ro" if v.get("read_only") else "rw")
        out[target] = (source, mode == "ro")
    return out


def test_grafana_and_prometheus_mount_the_repository_files_read_only(config: dict[str, Any]) -> None:
    grafana = _mounts(config["services"]["grafana"])
    provider = yaml.safe_load(
        (ROOT / "dashboards/grafana/provisioning/dashboards/rlkeel.yml").read_text())
    want = {"/etc/grafana/provisioning": "dashboards/grafana/provisioning",
            provider["providers"][0]["options"]["path"]: "dashboards/grafana/dashboards"}
    for target, rel in want.items():
        source, read_only = grafana[target]
        assert Path(source) == ROOT / rel and read_only, target
    source, read_only = _mounts(config["services"]["prometheus"])["/etc/prometheus"]
    assert Path(source) == ROOT / "dashboards/prometheus" and read_only
    command = " ".join(config["services"]["prometheus"]["command"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    # the provisioned datasource reads the variables compose gives grafana
    datasources = (ROOT / "dashboards/grafana/provisioning/datasources/rlkeel.yml").read_text()
    env = config["services"]["grafana"]["environment"]
    for var in set(re.findall(r"\$([A-Z_]+)", datasources)):
        assert var in env, var


def test_dockerfile_copies_what_exists_and_ignores_the_rest() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    entry = ROOT / "docker/server-entrypoint.sh"
    assert os.access(entry, os.X_OK)
    assert subprocess.run(["sh", "-n", str(entry)], capture_output=True).returncode == 0
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_entrypoint_waits_for_the_database_migrates_and_serves(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    name = f"rlkmetrics_compose_{uuid.uuid4().hex[:8]}"
    reader = f"rlkmetrics_grafana_{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "RLKEEL_ENVIRONMENT": "production", "RLKEEL_DATABASE_URL": _db_url(name),
           "PGPASSWORD": "not-checked-under-trust-auth",
           "RLKEEL_WEBHOOK_SECRETS_KEY": Fernet.generate_key().decode(),
           "RLKEEL_READER_USER": reader, "RLKEEL_READER_PASSWORD": "reader-pass",
           "RLKEEL_HOST": "127.0.0.1", "RLKEEL_PORT": str(port), "RLKEEL_DB_WAIT_S": "60"}  # fmt: skip
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([str(ROOT / "docker/server-entrypoint.sh")], env=env, stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    db = PgDatabase(name=name, url=_db_url(name))
    try:
        time.sleep(2)  # the database does not exist yet: the entry point must wait
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert "rlkeel_database_up 1.0" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
        with psycopg.connect(db.url) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone()
            member = conn.execute("SELECT pg_has_role(%s, 'rlkeel_reader', 'MEMBER')", (reader,))
            assert member.fetchone() == (True,)
        assert "waiting up to 60s for the database" in (tmp_path / "server.log").read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        drop_pg_database(db)
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{reader}"')
