"""Shared pieces of the benchmark scripts: machine description, percentiles, a server process."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`rlkeel serve` in its own process, on loopback."""

    def __init__(self, database_url: str, *, workers: int = 1, port: int | None = None,
                 extra_env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, RLKEEL_DATABASE_URL=database_url, RLKEEL_LOG_LEVEL="warning",
                   **(extra_env or {}))  # fmt: skip
        self.log = Path(f"/tmp/rlkeel-bench-server-{self.port}.log")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlkeel.cli.main", "serve", "--port", str(self.port),
             "--workers", str(workers), "--migrate"],
            env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def create_token(database_url: str, role: str = "trainer") -> str:
    out = subprocess.run(
        [sys.executable, "-m", "rlkeel.cli.main", "keys", "create", "--role", role],
        env=dict(os.environ, RLKEEL_DATABASE_URL=database_url), capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return out.stdout.strip()
