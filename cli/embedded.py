"""A whole rlkeel service for ``rlkeel demo`` and the benchmarks: a SQLite file (or any
database URL), migrated, a trainer and an operator key, and ``rlkeel serve`` in its own process
on a free loopback port (its own core: the trainer does not wait on the server's GIL)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedService"]


class EmbeddedService:
    """``with EmbeddedService(directory) as svc:`` → ``svc.url``, ``svc.trainer_token``,
    ``svc.operator_token``, ``svc.settings``."""

    def __init__(self, directory: str | Path | None = None, *,
                 database_url: str | None = None) -> None:  # fmt: skip
        from rlkeel.server.settings import Settings

        if database_url is None:
            if directory is None:
                raise ValueError("need a directory for the SQLite file, or a database_url")
            Path(directory).mkdir(parents=True, exist_ok=True)
            database_url = f"sqlite:///{Path(directory) / 'rlkeel.sqlite'}"
        self.directory = Path(directory) if directory is not None else None
        self.settings = Settings(database_url=database_url, log_level="warning")
        self.url = ""
        self.trainer_token = self.operator_token = ""
        self._process: Any = None

    def start(self) -> EmbeddedService:
        from rlkeel.server.auth import Role, create_api_key
        from rlkeel.server.db.engine import make_engine, make_session_factory
        from rlkeel.server.db.migrate import upgrade
        from rlkeel.server.process import ServerProcess

        logging.getLogger("alembic").setLevel(logging.WARNING)
        upgrade(self.settings)
        engine = make_engine(self.settings)
        try:
            with make_session_factory(engine).begin() as session:
                self.trainer_token = create_api_key(session, role=Role.trainer, name="trainer")
                self.operator_token = create_api_key(session, role=Role.operator, name="operator")
        finally:
            engine.dispose()
        log = (self.directory or Path("/tmp")) / "server.log"
        self._process = ServerProcess(self.settings.database_url, log_path=log).start()
        self.url = self._process.url
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def __enter__(self) -> EmbeddedService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
