"""The two payload formats a subscription can choose.

`rlkeel`: the Standard Webhooks shape, `{"type", "timestamp", "data"}`. It is also what the
outbox stores; the other format is rendered from it at send time, so every attempt of one
message sends the same body.

`alertmanager`: the body Prometheus Alertmanager's webhook receiver sends (version "4"), with
one firing alert per event, so tools that take Alertmanager webhooks (chat bridges, incident
tools) take rlkeel's too. Field names follow Alertmanager's documentation of webhook_config.
"""

from __future__ import annotations

import hashlib
import math
from enum import StrEnum
from typing import Any

from rlkeel.server.webhooks.events import Event

# Alertmanager's zero time: an alert with no known end.
NO_END = "0001-01-01T00:00:00Z"
# Fields of an event's data that become Alertmanager labels (bounded values only).
LABEL_FIELDS = ("detector", "metric", "kind", "origin", "status")


class PayloadFormat(StrEnum):
    rlkeel = "rlkeel"
    alertmanager = "alertmanager"


def json_safe(value: Any) -> Any:
    """Non-finite floats as the API writes them ("NaN", "Infinity"): JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def rlkeel_payload(event: Event) -> dict[str, Any]:
    data = {"severity": event.severity.value, "run": event.run, "summary": event.summary,
            **event.data}  # fmt: skip
    return {"type": event.type.value, "timestamp": event.occurred_at.isoformat(),
            "data": json_safe(data)}  # fmt: skip


def render(stored: dict[str, Any], fmt: str, *, webhook_id: int, public_url: str) -> dict[str, Any]:
    """The body to send, from the stored (rlkeel) payload."""
    if fmt == PayloadFormat.alertmanager:
        return alertmanager_payload(stored, webhook_id=webhook_id, public_url=public_url)
    return stored


def _alertname(event_type: str) -> str:
    # finding.raised → RlkeelFindingRaised
    return "Rlkeel" + "".join(p.capitalize() for p in event_type.split("."))


def _fingerprint(labels: dict[str, str]) -> str:
    text = "\xff".join(f"{k}\xff{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def alertmanager_payload(stored: dict[str, Any], *, webhook_id: int,
                         public_url: str) -> dict[str, Any]:  # fmt: skip
    data: dict[str, Any] = stored["data"]
    run: dict[str, Any] = data.get("run") or {}
    labels = {"alertname": _alertname(stored["type"]), "severity": str(data["severity"]),
              "event": stored["type"], "run": str(run.get("id", "")),
              "run_name": str(run.get("name", "")), "project": str(run.get("project", ""))}  # fmt: skip
    labels.update({f: str(data[f]) for f in LABEL_FIELDS if data.get(f) is not None})
    details = [f"{k}={v}" for k, v in sorted(data.items())
               if k not in ("summary", "run") and isinstance(v, str | int | float)]  # fmt: skip
    annotations = {"summary": str(data.get("summary", "")), "description": "; ".join(details)}
    base = public_url.rstrip("/")
    alert = {
        "status": "firing",
        "labels": labels,
        "annotations": annotations,
        "startsAt": stored["timestamp"].replace("+00:00", "Z"),
        "endsAt": NO_END,
        "generatorURL": f"{base}/v1/runs/{labels['run']}",
        "fingerprint": _fingerprint(labels),
    }
    return {
        "version": "4",
        "groupKey": "{}:{alertname=\"" + labels["alertname"] + "\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": f"rlkeel-webhook-{webhook_id}",
        "groupLabels": {"alertname": labels["alertname"]},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": base,
        "alerts": [alert],
    }
