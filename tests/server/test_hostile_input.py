"""Hostile input is refused early with a clear 4xx, never a 500 and never half-stored.

The limits (client/schemas.py): free JSON nests ≤ 32 levels, strings ≤ 65,536 characters,
≤ 100,000 values per field; ≤ 4,096 metrics per report; integers within ±2**62; no NUL
characters anywhere (PostgreSQL cannot store them). Bodies over the size limit: 413
(tests/server/test_ingest.py).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from rlkeel.client.schemas import (
    MAX_INT,
    MAX_JSON_DEPTH,
    MAX_JSON_STRING_CHARS,
    MAX_JSON_VALUES,
    MAX_METRICS,
)
from tests.server.helpers import RUN, rollout


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _op(tokens) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Bearer {tokens.operator}"}


async def _run(http: httpx.AsyncClient) -> str:
    r = await http.post("/v1/runs", json=RUN)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _count_runs(http: httpx.AsyncClient) -> int:
    return len((await http.get("/v1/runs")).json())


def _is_422(r: httpx.Response, field: str | None = None) -> bool:
    body = r.json()
    ok = r.status_code == 422 and body["error"] == "ValidationError" and body["detail"]
    return bool(ok and (field is None or any(f.startswith(field) for f in body["fields"])))


@pytest.mark.parametrize(
    ("label", "config", "words"),
    [
        ("too deep", _nested(MAX_JSON_DEPTH + 1), "deeper than 32"),
        ("huge string", {"s": "x" * (MAX_JSON_STRING_CHARS + 1)}, "longer than 65536"),
        ("huge key", {"k" * (MAX_JSON_STRING_CHARS + 1): 1}, "key is longer"),
        ("too many values", {"v": list(range(MAX_JSON_VALUES))}, "more than 100000 values"),
        ("huge integer", {"seed": MAX_INT + 1}, "beyond"),
    ],
)
async def test_free_json_past_the_limits_is_422(http, label, config, words) -> None:  # type: ignore[no-untyped-def]
    before = await _count_runs(http)
    r = await http.post("/v1/runs", json={**RUN, "config": config})
    assert _is_422(r, "config") and words in r.json()["detail"], (label, r.text[:300])
    assert await _count_runs(http) == before


async def test_free_json_at_the_limits_is_accepted(http) -> None:  # type: ignore[no-untyped-def]
    r = await http.post("/v1/runs", json={**RUN, "config": _nested(MAX_JSON_DEPTH)})
    assert r.status_code == 201, r.text[:300]
    config = {"s": "x" * MAX_JSON_STRING_CHARS, "v": list(range(MAX_JSON_VALUES - 10)),
              "seed": MAX_INT}  # fmt: skip
    r = await http.post("/v1/runs", json={**RUN, "config": config})
    assert r.status_code == 201, r.text[:300]
    assert r.json()["config"]["seed"] == MAX_INT


async def test_deep_raw_nesting_is_422_on_both_parsers(http) -> None:  # type: ignore[no-untyped-def]
    """Nesting far past any limit (100,000 levels) must not reach a recursion error (500)."""
    deep = "[" * 100_000 + "]" * 100_000
    headers = {"Content-Type": "application/json"}
    r = await http.post("/v1/runs", content=f'{{"config": {{"x": {deep}}}}}', headers=headers)
    assert _is_422(r), r.text[:300]
    run = await _run(http)
    report = rollout(0, n=1)
    report["samples"][0]["extra"] = {"x": "DEEP"}
    body = json.dumps(report).replace('"DEEP"', deep)
    r = await http.post(f"/v1/runs/{run}/steps", content=body, headers=headers)
    assert _is_422(r), r.text[:300]


async def test_step_report_limits(http) -> None:  # type: ignore[no-untyped-def]
    run = await _run(http)
    metrics = {f"m{i}": 1.0 for i in range(MAX_METRICS + 1)}
    r = await http.post(f"/v1/runs/{run}/steps", json=rollout(0, n=1, metrics=metrics))
    assert _is_422(r, "metrics"), r.text[:300]
    deep = rollout(0, n=1)
    deep["samples"][0]["extra"] = _nested(MAX_JSON_DEPTH + 1)
    r = await http.post(f"/v1/runs/{run}/steps", json=deep)
    assert _is_422(r, "samples.0.extra"), r.text[:300]
    long_id = rollout(0, n=1)
    long_id["samples"][0]["sample_id"] = "s" * 201
    assert _is_422(await http.post(f"/v1/runs/{run}/steps", json=long_id), "samples.0.sample_id")
    r = await http.post(f"/v1/runs/{run}/steps", json=rollout(MAX_INT + 1, n=1))
    assert _is_422(r, "step")
    assert (await http.get(f"/v1/runs/{run}/steps")).json()["items"] == []


async def test_invalid_json_is_422_on_both_parsers(http) -> None:  # type: ignore[no-untyped-def]
    headers = {"Content-Type": "application/json"}
    assert _is_422(await http.post("/v1/runs", content=b"{not json", headers=headers), "body")
    run = await _run(http)
    r = await http.post(f"/v1/runs/{run}/steps", content=b"{not json", headers=headers)
    assert _is_422(r)


@pytest.mark.parametrize("where", ["body", "path", "query"])
async def test_nul_characters_are_422(http, where) -> None:  # type: ignore[no-untyped-def]
    before = await _count_runs(http)
    if where == "body":
        r = await http.post("/v1/runs", json={**RUN, "name": "a\x00b"})
    elif where == "path":
        r = await http.get("/v1/runs/a%00b")
    else:
        r = await http.get("/v1/runs", params={"project": "a\x00b"})
    assert _is_422(r, where) and "NUL" in r.json()["detail"], r.text
    assert await _count_runs(http) == before


async def test_nul_escape_split_across_body_chunks_is_seen(app, tokens) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({**RUN, "name": "x" * 70_000 + "\x00"}).encode()
    split = body.index(b"\\u0000") + 3  # the escape straddles two chunks

    async def chunks():  # type: ignore[no-untyped-def]
        yield body[:split]
        yield body[split:]

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                 headers={"Authorization": f"Bearer {tokens.trainer}"}) as c:  # fmt: skip
        r = await c.post("/v1/runs", content=chunks(), headers={"Content-Type": "application/json"})
    assert _is_422(r, "body"), r.text[:300]


async def test_escaped_backslash_before_u0000_is_text_not_nul(http) -> None:  # type: ignore[no-untyped-def]
    r = await http.post("/v1/runs", json={**RUN, "config": {"path": "C:\\u0000"}})
    assert r.status_code == 201, r.text
    assert r.json()["config"]["path"] == "C:\\u0000"


async def test_ids_past_bigint_are_422(http, tokens) -> None:  # type: ignore[no-untyped-def]
    op = _op(tokens)
    huge = str(2**70)
    for method, path, headers in [
        ("POST", f"/v1/commands/{huge}/ack", {}),
        ("POST", f"/v1/commands/{huge}/approve", op),
        ("POST", f"/v1/commands/{huge}/reject", op),
        ("POST", f"/v1/findings/{huge}/ack", op),
    ]:
        body = {"status": "applied", "step": 0} if path.endswith("/ack") and "commands" in path else {}
        r = await http.request(method, path, headers=headers, json=body)
        assert _is_422(r, "id"), (path, r.status_code, r.text)
    assert _is_422(await http.get("/v1/audit", headers=op, params={"after": huge}), "after")


async def test_integers_past_the_cap_are_422(http, tokens) -> None:  # type: ignore[no-untyped-def]
    run = await _run(http)
    big = MAX_INT + 1
    r = await http.post("/v1/runs", json={**RUN, "model": {"name": "m", "parameter_count": big}})
    assert _is_422(r, "model.parameter_count")
    r = await http.post(f"/v1/runs/{run}/commands", headers=_op(tokens),
                        json={"kind": "rollback", "params": {"to_step": 1}, "effective_step": big})  # fmt: skip
    assert _is_422(r, "effective_step")
    r = await http.post(f"/v1/runs/{run}/commands", headers=_op(tokens),
                        json={"kind": "rollback", "params": {"to_step": big}})  # fmt: skip
    assert _is_422(r, "params")


async def test_nonfinite_numbers_in_free_json_are_stored_as_strings(http) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({**RUN, "config": {"lr": float("nan"), "clip": [float("inf"), 1.0]}})
    r = await http.post("/v1/runs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    assert r.json()["config"] == {"lr": "NaN", "clip": ["Infinity", 1.0]}
    run = r.json()["id"]
    report = rollout(0, n=2)
    report["samples"][0]["extra"] = {"mean_log_prob": float("-inf")}
    r = await http.post(f"/v1/runs/{run}/steps", content=json.dumps(report),
                        headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 201, r.text
    rows = (await http.get(f"/v1/runs/{run}/samples", params={"step": 0})).json()
    assert {r["sample_id"]: r["extra"] for r in rows}["s0"] == {"mean_log_prob": "-Infinity"}


async def test_nonfinite_policy_values_are_422(http, tokens) -> None:  # type: ignore[no-untyped-def]
    run = await _run(http)
    body = json.dumps({"max_drop_frac": float("nan")})
    r = await http.put(f"/v1/runs/{run}/policy", content=body,
                       headers={**_op(tokens), "Content-Type": "application/json"})  # fmt: skip
    assert _is_422(r, "max_drop_frac"), r.text


def _unbounded_strings(spec: dict[str, Any]) -> list[str]:
    """Request strings (bodies, path and query parameters) without a maxLength or an enum."""
    schemas = spec["components"]["schemas"]
    found: list[str] = []

    def walk(schema: dict[str, Any], where: str, seen: frozenset[str]) -> None:
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            if name not in seen:
                walk(schemas[name], name, seen | {name})
            return
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in schema.get(key, []):
                walk(sub, where, seen)
        if schema.get("type") == "string" and "enum" not in schema and "const" not in schema:
            if not 0 < schema.get("maxLength", 0) <= MAX_JSON_STRING_CHARS:
                found.append(where)
        for prop, sub in schema.get("properties", {}).items():
            walk(sub, f"{where}.{prop}", seen)
        if isinstance(schema.get("items"), dict):
            walk(schema["items"], f"{where}[]", seen)
        if isinstance(schema.get("additionalProperties"), dict):
            walk(schema["additionalProperties"], f"{where}{{}}", seen)
        if isinstance(schema.get("propertyNames"), dict):
            walk(schema["propertyNames"], f"{where}{{key}}", seen)

    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            label = f"{method.upper()} {path}"
            for param in op.get("parameters", []):
                walk(param.get("schema", {}), f"{label} {param['in']} {param['name']}", frozenset())
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            if body:
                walk(body["schema"], f"{label} body", frozenset())
    return sorted(set(found))


def test_every_request_string_is_bounded(app) -> None:  # type: ignore[no-untyped-def]
    """A string the API accepts has a maxLength ≤ 65,536 (free JSON is bounded by its own
    check): a new field without one fails here."""
    assert _unbounded_strings(app.openapi()) == []
    loose = {"paths": {"/x": {"post": {"requestBody": {"content": {"application/json": {
        "schema": {"type": "object", "properties": {"s": {"type": "string"}}}}}}}}},
        "components": {"schemas": {}}}  # fmt: skip
    assert _unbounded_strings(loose) == ["POST /x body.s"]
