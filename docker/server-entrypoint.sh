#!/bin/sh
# The rlkeel server container: wait for the database, migrate, create the dashboards' read-only
# login, serve. Every setting comes from the environment (docker-compose.yml).
set -eu

: "${RLKEEL_DATABASE_URL:?RLKEEL_DATABASE_URL must be set}"
wait_s="${RLKEEL_DB_WAIT_S:-60}"

echo "rlkeel: waiting up to ${wait_s}s for the database" >&2
python - "$wait_s" <<'PY'
import sys
import time

from sqlalchemy import create_engine, text

from rlkeel.server.settings import Settings

deadline = time.monotonic() + float(sys.argv[1])
engine = create_engine(Settings().normalized_database_url, pool_pre_ping=True)
while True:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        break
    except Exception as exc:  # noqa: BLE001 - any failure: not up yet
        if time.monotonic() > deadline:
            sys.exit(f"rlkeel: the database did not answer in time: {exc}")
        time.sleep(1)
engine.dispose()
PY

rlkeel db upgrade
if [ -n "${RLKEEL_READER_PASSWORD:-}" ]; then
  rlkeel db reader-login "${RLKEEL_READER_USER:-grafana}"
fi
exec rlkeel serve --host "${RLKEEL_HOST:-0.0.0.0}" --port "${RLKEEL_PORT:-8000}" "$@"
