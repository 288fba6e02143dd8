"""Shared pieces of the benchmark scripts: machine description, percentiles, a server process."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import uuid
from dataclasses import dataclass

import psycopg

from rlkeel.server.process import ServerProcess as _ServerProcess

PG_ADMIN_URL = os.environ.get("RLKEEL_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def machine() -> str:
    cpus = os.cpu_count()
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {cpus} cores{mem}, Python {platform.python_version()}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


@dataclass
class BenchDatabase:
    name: str
    url: str

    @classmethod
    def create(cls) -> BenchDatabase:
        name = f"rlkeel_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_URL.rpartition("/")[0]
        return cls(name=name, url=f"{base}/{name}")

    def drop(self) -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class ServerProcess(_ServerProcess):
    """`rlkeel serve` in its own process, started at construction (bench convenience)."""

    def __init__(self, database_url: str, *, workers: int = 1, port: int | None = None,
                 extra_env: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(database_url, workers=workers, port=port, extra_env=extra_env)
        self.start()


def create_token(database_url: str, role: str = "trainer") -> str:
    out = subprocess.run(
        [sys.executable, "-m", "rlkeel.cli.main", "keys", "create", "--role", role],
        env=dict(os.environ, RLKEEL_DATABASE_URL=database_url), capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return out.stdout.strip()
