"""The delivery worker: an asyncio task in the server's lifespan.

Each tick claims due deliveries (a short transaction, FOR UPDATE SKIP LOCKED, so several server
processes share the outbox without sending a message twice), sends them concurrently, and
records each attempt. Every `run_stall_check_interval_s` it also announces stalled runs.
Database work runs in threads: the engine is synchronous.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from rlkeel.server.db.base import utcnow
from rlkeel.server.settings import Settings
from rlkeel.server.webhooks import outbox, service
from rlkeel.server.webhooks.outbox import Claim
from rlkeel.server.webhooks.payloads import render
from rlkeel.server.webhooks.retry import RetrySchedule
from rlkeel.server.webhooks.secret_store import SecretBox, valid_secrets
from rlkeel.server.webhooks.sender import AttemptOutcome, guarded_client, send
from rlkeel.server.webhooks.urls import UrlPolicy

log = logging.getLogger("rlkeel.webhooks")

BATCH = 16
PURGE_INTERVAL_S = 3600.0


def public_url(settings: Settings) -> str:
    return settings.public_url or f"http://{settings.host}:{settings.port}"


class DeliveryWorker:
    def __init__(self, *, settings: Settings, session_factory: sessionmaker[Session],
                 secret_box: Callable[[], SecretBox],
                 metrics_of: Callable[[], Any] | None = None) -> None:  # fmt: skip
        """`secret_box`: a callable returning the SecretBox (made on first use);
        `metrics_of`: a callable returning the metrics object or None (CONTRACTS)."""
        self.settings = settings
        self.session_factory = session_factory
        self._secret_box = secret_box
        self._metrics_of = metrics_of or (lambda: None)
        self.schedule = RetrySchedule(base_s=settings.webhook_retry_base_s,
                                      max_s=settings.webhook_retry_max_s,
                                      max_attempts=settings.webhook_max_attempts)  # fmt: skip
        self.policy = UrlPolicy(allow_loopback=settings.webhook_allow_loopback,
                                allow_link_local=settings.webhook_allow_link_local)  # fmt: skip
        self.lease_s = 2 * settings.webhook_timeout_s + 30.0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._next_stall_check = 0.0
        self._next_purge = 0.0
        self.purge_interval_s = PURGE_INTERVAL_S

    # --- one tick ---------------------------------------------------------------------------

    def _claim(self, now: datetime) -> list[Claim]:
        with self.session_factory.begin() as session:
            return outbox.claim_due(session, now=now, limit=BATCH, lease_s=self.lease_s)

    def _finish(self, claim: Claim, outcome: AttemptOutcome) -> str | None:
        with self.session_factory.begin() as session:
            return outbox.finish(session, claim, outcome, schedule=self.schedule, now=utcnow())

    def _announce_stalls(self) -> None:
        with self.session_factory.begin() as session:
            service.announce_stalled_runs(session, now=utcnow(),
                                          stall_after_s=self.settings.run_stall_after_s)  # fmt: skip

    def _purge(self) -> None:
        cutoff = utcnow() - timedelta(days=self.settings.webhook_retention_days)
        with self.session_factory.begin() as session:
            n = outbox.purge_finished(session, before=cutoff)
        if n:
            log.info("deleted %d webhook deliveries older than %s", n, cutoff.isoformat())

    async def _attempt(self, client: httpx.AsyncClient, claim: Claim) -> str | None:
        try:
            box = self._secret_box()
            secrets = valid_secrets(box, claim.secret_entries, utcnow())
            body = render(claim.payload, claim.payload_format, webhook_id=claim.webhook_id,
                          public_url=public_url(self.settings))  # fmt: skip
            outcome = await send(client, url=claim.url, payload=body, message_id=claim.message_id,
                                 secrets=secrets, policy=self.policy,
                                 timeout_s=self.settings.webhook_timeout_s)  # fmt: skip
        except Exception as exc:  # noqa: BLE001  (a bad key or payload fails the attempt)
            log.exception("webhook delivery %s could not be prepared", claim.delivery_id)
            outcome = AttemptOutcome(False, None, f"{type(exc).__name__}: {exc}", 0.0)
        result = await asyncio.to_thread(self._finish, claim, outcome)
        if result is not None:
            metrics = self._metrics_of()
            if metrics is not None:
                metrics.observe_webhook_delivery(result)
            if result != outbox.DELIVERED:
                level = logging.WARNING if result == outbox.DEAD else logging.INFO
                log.log(level, "webhook delivery %s attempt %s %s: %s", claim.delivery_id,
                        claim.attempt, result, outcome.error)  # fmt: skip
        return result

    async def run_once(self, client: httpx.AsyncClient) -> list[str | None]:
        """Claim what is due and attempt it; the results ('delivered', 'failed', 'dead')."""
        if time.monotonic() >= self._next_stall_check:
            self._next_stall_check = time.monotonic() + self.settings.run_stall_check_interval_s
            await asyncio.to_thread(self._announce_stalls)
        if self.settings.webhook_retention_days > 0 and time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + self.purge_interval_s
            await asyncio.to_thread(self._purge)
        claims = await asyncio.to_thread(self._claim, utcnow())
        return list(await asyncio.gather(*(self._attempt(client, c) for c in claims)))

    def http_client(self) -> httpx.AsyncClient:
        return guarded_client(self.policy)

    # --- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        async with self.http_client() as client:
            while not self._stopping:
                self._wake.clear()
                results: list[str | None] = []
                try:
                    results = await self.run_once(client)
                except Exception:  # noqa: BLE001  (the database may be down: keep going)
                    log.exception("webhook worker tick failed")
                if len(results) == BATCH:
                    continue  # more may be due: no pause
                try:
                    await asyncio.wait_for(self._wake.wait(), self.settings.webhook_poll_interval_s)
                except TimeoutError:
                    pass

    def wake(self) -> None:
        """Look for due deliveries now, not at the next poll. Safe from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="rlkeel-webhook-worker")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=self.settings.webhook_timeout_s + 5)
            except TimeoutError:
                pass  # wait_for cancelled it
            self._task = None
        self._loop = None
