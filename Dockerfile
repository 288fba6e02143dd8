# The rlkeel server (no trainer, no torch): docker-compose.yml builds it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY rlkeel_pkg/ rlkeel_pkg/
COPY client/ client/
COPY server/ server/
COPY trainer/ trainer/
COPY cli/ cli/
COPY migrations/ migrations/
COPY dashboards/ dashboards/
RUN pip install --no-compile ".[server]" && rm -rf /src

COPY docker/server-entrypoint.sh /usr/local/bin/rlkeel-server
RUN useradd --system --uid 10001 --home-dir /home/rlkeel --create-home rlkeel
USER rlkeel
WORKDIR /home/rlkeel

ENV RLKEEL_HOST=0.0.0.0 RLKEEL_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["rlkeel-server"]
