from __future__ import annotations

import math

RUN = {"name": "r1", "algorithm": "grpo", "model": {"name": "builtin-tiny"}}


def sample(i: int, **kw):  # type: ignore[no-untyped-def]
    base = {"sample_id": f"s{i}", "group_id": f"g{i // 4}", "reward": 1.0, "advantage": 0.5,
            "length": 10 + i, "truncated": False, "kl": 0.01, "entropy": 1.2, "repetition": 0.0}
    base.update(kw)
    return base


async def test_register_report_and_read_back(http) -> None:  # type: ignore[no-untyped-def]
    r = await http.post("/v1/runs", json=RUN)
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    body = {"step": 0, "phase": "rollout", "algorithm": "grpo",
            "metrics": {"loss": "NaN", "kl_mean": "Infinity", "custom": "-Infinity", "reward_mean": 0.5},
            "samples": [sample(i) for i in range(8)]}
    r = await http.post(f"/v1/runs/{run_id}/steps", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["drop"] == []
    r2 = await http.post(f"/v1/runs/{run_id}/steps", json=body)
    assert r2.status_code == 200 and r2.json() == r.json()
    steps = (await http.get(f"/v1/runs/{run_id}/steps")).json()
    assert len(steps["items"]) == 1
    m = steps["items"][0]["metrics"]
    assert m["loss"] == "NaN" and m["kl_mean"] == "Infinity" and m["custom"] == "-Infinity"
    assert m["reward_mean"] == 0.5
    samples = (await http.get(f"/v1/runs/{run_id}/samples", params={"step": 0})).json()
    assert [s["sample_id"] for s in samples] == [f"s{i}" for i in range(8)]
    assert not math.isnan(samples[0]["reward"])
