"""A throwaway PostgreSQL 15 cluster of the test's own, to stop and start at will.

Made with Debian's `pg_createcluster` on a free port (trust auth on loopback, no fsync), driven
with `pg_ctlcluster`, removed with `pg_dropcluster`. Only clusters this module created (their
names start with `rlkfault_`) are ever stopped: the shared cluster on 5432 is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import dataclass

from tests.conftest import free_port

VERSION = "15"
PREFIX = "rlkfault_"


def available() -> str | None:
    """Why a private cluster cannot be made here, or None when it can."""
    for tool in ("pg_createcluster", "pg_ctlcluster", "pg_dropcluster"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian's postgresql-common)"
    return None


@dataclass
class OwnCluster:
    name: str
    port: int

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @classmethod
    def create(cls) -> OwnCluster:
        cluster = cls(name=f"{PREFIX}{uuid.uuid4().hex[:10]}", port=free_port())
        cluster._ctl(
            "pg_createcluster", VERSION, cluster.name, "-p", str(cluster.port), "--start",
            "-o", "fsync=off", "-o", "synchronous_commit=off", "-o", "full_page_writes=off",
            "-o", "shared_buffers=32MB",
            "--", "--auth=trust", "--no-sync",
        )  # fmt: skip
        try:
            cluster.start_if_down()
        except BaseException:
            cluster.drop()
            raise
        return cluster

    def _ctl(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.name.startswith(PREFIX) and self.port != 5432, "never the shared cluster"
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            if argv[0] == "pg_createcluster":
                self._ctl("pg_dropcluster", VERSION, self.name, "--stop", check=False)
            raise RuntimeError(f"{' '.join(argv)} failed: {out.stderr[-2000:]}")
        return out

    def start_if_down(self) -> None:
        status = self._ctl("pg_ctlcluster", VERSION, self.name, "status", check=False)
        if status.returncode != 0:
            self.start()

    def stop(self) -> None:
        """Fast shutdown: open sessions are terminated, as when a database host goes down."""
        self._ctl("pg_ctlcluster", VERSION, self.name, "stop", "-m", "fast")

    def start(self) -> None:
        self._ctl("pg_ctlcluster", VERSION, self.name, "start")

    def drop(self) -> None:
        self._ctl("pg_dropcluster", VERSION, self.name, "--stop")
