"""The benchmark's trace generator: labels, determinism, schema, and the injected events."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from rlkeel.client.schemas import StepReport
from rlkeel.server.detectors import DETECTORS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from detector_traces import (  # noqa: E402
    GROUP_SIZE,
    GROUPS,
    HEALTHY,
    RLWATCH_CATCHERS,
    SCENARIOS,
    make_traces,
    wire,
)

STEPS = 120


@pytest.fixture(scope="module")
def traces():  # type: ignore[no-untyped-def]
    return make_traces(seeds=[0, 1], noises=[0.5, 2.0], steps=STEPS)


@pytest.fixture(scope="module")
def by_name(traces):  # type: ignore[no-untyped-def]
    return {t.name: list(t.reports()) for t in traces if t.seed == 0 and t.noise == 0.5}


def test_labels(traces) -> None:  # type: ignore[no-untyped-def]
    known = {d.name for d in DETECTORS}
    healthy = [t for t in traces if t.scenario == HEALTHY]
    events = [t for t in traces if t.scenario != HEALTHY]
    assert len(healthy) == 2 * 2 * 2 and all(t.onset is None and not t.catchers for t in healthy)
    assert len(events) == 2 * 2 * len(SCENARIOS)
    for t in events:
        assert int(0.45 * STEPS) <= t.onset <= int(0.7 * STEPS)
        assert t.catchers == SCENARIOS[t.scenario] and set(t.catchers) <= known
        assert t.rlwatch_catchers == RLWATCH_CATCHERS[t.scenario]
    assert len({t.name for t in traces}) == len(traces)


def test_deterministic_and_valid(traces) -> None:  # type: ignore[no-untyped-def]
    t = next(x for x in traces if x.scenario == "nan")
    a, b = list(t.reports()), list(t.reports())
    assert json.dumps(wire(a)) == json.dumps(wire(b))
    assert len(a) == STEPS
    for step, (rollout, update) in enumerate(a):
        r = StepReport.model_validate_json(json.dumps(wire(rollout), allow_nan=False))
        u = StepReport.model_validate_json(json.dumps(wire(update), allow_nan=False))
        assert (r.step, r.phase, u.step, u.phase) == (step, "rollout", step, "update")
        assert len(r.samples) == GROUPS * GROUP_SIZE
        assert len({s.group_id for s in r.samples}) == GROUPS


def _m(reports, t, name):  # type: ignore[no-untyped-def]
    rollout, update = reports[t]
    return {**rollout["metrics"], **update["metrics"]}[name]


def test_healthy_is_realistic(by_name) -> None:  # type: ignore[no-untyped-def]
    h = by_name[f"{HEALTHY}-s0-n0.5"]
    for t in range(STEPS):
        assert 0.003 < _m(h, t, "kl_mean") < 0.1
        assert 1e-4 < _m(h, t, "clip_frac") < 1e-2
        assert _m(h, t, "truncation_rate") < 0.25  # the truncation_rate detector's threshold
        assert all(math.isfinite(_m(h, t, k)) for k in ("loss", "grad_norm"))
        assert _m(h, t, "positive_frac") > 0.1
    assert sum(_m(h, t, "truncation_rate") for t in range(STEPS)) / STEPS < 0.08
    first_len = sum(_m(h, t, "length_mean") for t in range(20))
    last_len = sum(_m(h, t, "length_mean") for t in range(STEPS - 20, STEPS))
    assert last_len > first_len  # healthy responses grow
    first = sum(_m(h, t, "entropy_mean") for t in range(20))
    last = sum(_m(h, t, "entropy_mean") for t in range(STEPS - 20, STEPS))
    assert last < first


def test_events_are_injected_at_onset(traces, by_name) -> None:  # type: ignore[no-untyped-def]
    onset = {t.scenario: t.onset for t in traces if t.seed == 0 and t.noise == 0.5}
    ev = {s: by_name[f"{s}-s0-n0.5"] for s in SCENARIOS}

    def before_after(s, metric, k=5):  # type: ignore[no-untyped-def]
        o = onset[s]
        pre = [_m(ev[s], t, metric) for t in range(o - k, o)]
        post = [_m(ev[s], t, metric) for t in range(o + k, o + 2 * k)]
        return pre, post

    o = onset["nan"]
    assert math.isnan(_m(ev["nan"], o, "loss")) and math.isnan(_m(ev["nan"], o, "grad_norm"))
    assert all(math.isfinite(_m(ev["nan"], t, "loss")) for t in range(o))
    o = onset["kl_spike"]
    assert _m(ev["kl_spike"], o, "kl_mean") > 2.5 * _m(ev["kl_spike"], o - 1, "kl_mean")
    o = onset["grad_norm_spikes"]
    assert _m(ev["grad_norm_spikes"], o, "grad_norm") > 5 * _m(ev["grad_norm_spikes"], o - 1,
                                                              "grad_norm")  # fmt: skip
    pre, post = before_after("stale_clip_frac", "clip_frac")
    assert max(pre) < 0.01 and all(0.2 < x < 0.6 for x in post)
    pre, post = before_after("low_positive_frac", "positive_frac")
    assert min(pre) > 0.1 and sum(post) / len(post) < 0.1
    pre, post = before_after("entropy_collapse", "entropy_mean", k=10)
    assert post[-1] < 0.15 * min(pre) and min(pre) > 0.3
    pre, post = before_after("length_explosion", "repetition_mean")
    assert max(post) > 2 * max(pre)
    pre, post = before_after("reward_hacking", "length_mean", k=10)
    assert min(post) > 1.3 * max(pre)
    _, rpost = before_after("reward_hacking", "reward_mean", k=10)
    assert sum(rpost) / len(rpost) > 0.8
