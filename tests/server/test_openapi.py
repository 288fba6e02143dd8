"""The OpenAPI document is complete: every route documented, every field and parameter described."""

from __future__ import annotations

from typing import Any


def _openapi(app) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return app.openapi()  # type: ignore[no-any-return]


def test_every_schema_property_is_described(app) -> None:  # type: ignore[no-untyped-def]
    spec = _openapi(app)
    missing = []
    for name, schema in spec["components"]["schemas"].items():
        if name in ("HTTPValidationError", "ValidationError"):
            continue  # FastAPI's own, unused: errors use our envelope
        for prop, body in schema.get("properties", {}).items():
            if not body.get("description"):
                missing.append(f"{name}.{prop}")
    assert missing == [], f"undescribed fields: {missing}"


def test_every_operation_has_a_summary_and_described_parameters(app) -> None:  # type: ignore[no-untyped-def]
    spec = _openapi(app)
    problems = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if not op.get("description") and not op.get("summary"):
                problems.append(f"{method.upper()} {path}: no description")
            for param in op.get("parameters", []):
                if param["in"] == "query" and not param.get("description"):
                    problems.append(f"{method.upper()} {path}: query {param['name']} undescribed")
    assert problems == []


def test_step_report_body_is_in_the_document(app) -> None:  # type: ignore[no-untyped-def]
    spec = _openapi(app)
    op = spec["paths"]["/v1/runs/{run}/steps"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/StepReport"
    assert "StepReport" in spec["components"]["schemas"]
    assert "SampleStats" in spec["components"]["schemas"]
