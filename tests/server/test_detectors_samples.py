"""Per-sample detectors, the IsolationForest schedule, state round trips and bounds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from rlkeel.client.schemas import Algorithm, Phase, SampleStats, StepReport
from rlkeel.server.detectors import (
    RunDetectorState,
    evaluate_rollout,
    evaluate_update,
    forest_refit_due,
    refit_isolation_forest,
)
from rlkeel.server.detectors.forest import RESERVOIR, fast_anomaly_scores
from rlkeel.server.detectors.state import SAMPLE_HISTORY, STEP_WINDOW
from rlkeel.server.policy import DEFAULT_POLICY, PolicyConfig
from tests.server.test_detectors_traces import Replay, Trace

EVENT = 40

SAMPLE_CASES = [
    ("sample_length_z", {"length": 40_000}),
    ("sample_kl_z", {"kl": 5.0}),
    ("sample_advantage_z", {"advantage": 40.0}),
    ("sample_log_ratio_z", {"log_ratio_max": 15.0}),
    ("sample_repetition_loop", {"truncated": True, "repetition": 0.9, "length": 2048}),
    ("sample_grad_share", {"advantage": 2.5, "length": 9_000}),
    ("sample_nonfinite", {"advantage": math.nan}),
    ("sample_nonfinite", {"kl": math.inf}),
    ("sample_isolation_forest", {"entropy": 6.0, "repetition": 0.99, "kl": 2.0,
                                 "log_ratio_max": 2.0}),
]  # fmt: skip


@pytest.mark.parametrize(("detector", "patch"), SAMPLE_CASES,
                         ids=[f"{d}-{i}" for i, (d, _) in enumerate(SAMPLE_CASES)])  # fmt: skip
def test_sample_detector_flags_the_crafted_sample(detector, patch) -> None:
    trace = Trace(seed=21, sample_overrides={EVENT: {0: patch}})
    replay = Replay()
    before = replay.run(trace, range(EVENT))
    assert [f for f in before if f.detector == detector] == []
    found = replay.step(trace, EVENT)
    assert detector in replay.flags[EVENT]["s0-0"]
    hit = [f for f in found if f.detector == detector]
    assert hit and hit[0].sample_ids[0] == "s0-0" and hit[0].step == EVENT
    others = [sid for sid, r in replay.flags[EVENT].items() if sid != "s0-0" and detector in r]
    assert others == []


def test_forest_is_never_fit_on_the_request_path() -> None:
    state, trace = RunDetectorState(), Trace(seed=22)
    for t in range(30):
        evaluate_rollout(state, trace.rollout(t), DEFAULT_POLICY)
    assert state.forest.model is None  # enough rows, but only refit_isolation_forest fits
    assert forest_refit_due(state, DEFAULT_POLICY)
    assert refit_isolation_forest(state, DEFAULT_POLICY)
    model = state.forest.model
    for t in range(30, 40):
        evaluate_rollout(state, trace.rollout(t), DEFAULT_POLICY)
    assert state.forest.model is model and not forest_refit_due(state, DEFAULT_POLICY)


def test_fast_forest_scores_equal_score_samples() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 7))
    model = IsolationForest(n_estimators=50, max_samples=256, random_state=1).fit(x)
    y = rng.normal(size=(100, 7)) * 3
    np.testing.assert_allclose(fast_anomaly_scores(model, y), -model.score_samples(y), rtol=1e-12)


def test_nan_samples_never_crash() -> None:
    samples = [SampleStats(sample_id=f"s{i}", group_id="g", reward=math.nan if i % 2 else 1.0,
                           advantage=math.inf if i % 3 == 0 else 0.5, length=i, kl=math.nan,
                           log_ratio_max=-math.inf, entropy=math.nan)
               for i in range(10)]  # fmt: skip
    state = RunDetectorState()
    report = StepReport(step=0, phase=Phase.rollout, algorithm=Algorithm.grpo,
                        metrics={"reward_mean": math.nan}, samples=samples)
    ev = evaluate_rollout(state, report, DEFAULT_POLICY)
    assert set(ev.sample_flags) == {f"s{i}" for i in range(10)}
    assert all(r[0] == "sample_nonfinite" for r in ev.sample_flags.values())
    json.dumps(state.to_dict(), allow_nan=False)
    empty = StepReport(step=1, phase=Phase.rollout, algorithm=Algorithm.grpo)
    assert evaluate_rollout(state, empty, DEFAULT_POLICY).findings == []


def _dump(findings) -> list[str]:
    return [json.dumps(f.to_dict(), sort_keys=True) for f in findings]


def test_state_round_trip_mid_trace_gives_the_same_findings() -> None:
    events = {70: {"grad_norm": 9.0}, 90: {"kl_mean": 0.5}, 95: {"loss": math.nan}}
    samples = {75: {0: {"length": 30_000}}, 85: {3: {"truncated": True, "repetition": 0.8}}}
    trace = Trace(seed=23, step_overrides=events, sample_overrides=samples)
    straight, restarted = Replay(), Replay()
    straight.run(trace, range(110))
    for t in range(110):
        restarted.step(trace, t, roundtrip=t % 17 == 0 or t == 60)
    assert _dump(restarted.findings) == _dump(straight.findings)
    assert restarted.flags == straight.flags
    assert {f.detector for f in straight.findings} >= {"grad_norm_spike", "kl_spike",
                                                       "nonfinite_step", "sample_length_z"}
    assert json.dumps(restarted.state.to_dict()) == json.dumps(straight.state.to_dict())


def test_state_is_bounded() -> None:
    cfg = PolicyConfig(detectors={"sample_isolation_forest": {"enabled": False}})
    state = RunDetectorState()
    trace = Trace(seed=24, algorithm=Algorithm.ppo)
    rollouts = [(r := trace.rollout(t)).model_copy(update={"samples": r.samples[:4]})
                for t in range(20)]
    updates = [trace.update(t) for t in range(20)]
    sizes = {}
    for t in range(10_000):
        r, u = rollouts[t % 20], updates[t % 20]
        if t % 20 == 0 or t < 400:
            evaluate_rollout(state, r.model_copy(update={"step": t}), cfg)
        evaluate_update(state, u.model_copy(update={"step": t}), cfg)
        if t in (9, 399, 9_999):
            sizes[t] = len(json.dumps(state.to_dict()))
    assert all(len(w) <= STEP_WINDOW for w in state.windows.values())
    assert all(len(h) <= SAMPLE_HISTORY for h in state.sample_history.values())
    assert len(state.forest.rows) <= RESERVOIR
    assert abs(sizes[9_999] - sizes[399]) <= 0.05 * sizes[399]  # full windows: flat
    assert sizes[9] <= sizes[9_999] <= 40 * sizes[9]  # windows fill, then stop growing


def _kl_flagged(replay: Replay, steps: range) -> list[int]:
    return [sum("sample_kl_z" in r for r in replay.flags.get(t, {}).values()) for t in steps]


def test_a_history_with_zero_mad_does_not_flag_every_later_sample() -> None:
    # The first reports: the policy is still the reference, KL exactly 0 for every sample.
    zero_kl = {t: {i: {"kl": 0.0} for i in range(32)} for t in range(3)}
    replay = Replay()
    replay.run(Trace(seed=25, sample_overrides=zero_kl), range(20))
    assert max(_kl_flagged(replay, range(3, 20))) <= 1


def test_a_lasting_shift_is_learned_not_flagged_forever() -> None:
    # From step 30 every sample's KL is 200x (spread as before): a shift of the whole run,
    # for kl_spike; the per-sample detector must not flag (and drop) the run from then on.
    rng = np.random.default_rng(26)
    shifted = {t: {i: {"kl": float(2.0 * rng.lognormal(0.0, 0.5))} for i in range(32)}
               for t in range(30, 80)}  # fmt: skip
    replay = Replay()
    replay.run(Trace(seed=26, sample_overrides=shifted), range(80))
    flagged = _kl_flagged(replay, range(30, 80))
    assert sum(flagged) <= 5 and flagged[-20:] == [0] * 20
