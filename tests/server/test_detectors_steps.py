"""Per-step detectors: each fires on a crafted trace and stays silent on the healthy one."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rlkeel.client.schemas import Algorithm, Phase, StepReport
from rlkeel.server.detectors import RunDetectorState, evaluate_update
from rlkeel.server.detectors.stats import Gate
from rlkeel.server.policy import DEFAULT_POLICY, PolicyConfig
from tests.server.test_detectors_traces import Replay, Trace

ONSET = 60


def _ramp(metric: str, fn, steps: int = 60) -> dict[int, dict[str, float]]:
    return {t: {metric: fn(t - ONSET)} for t in range(ONSET, ONSET + steps)}


def _at(metric: str, value: float, steps: int = 1) -> dict[int, dict[str, float]]:
    return {t: {metric: value} for t in range(ONSET, ONSET + steps)}


CASES = [
    ("kl_spike", Algorithm.grpo, _at("kl_mean", 0.3)),
    ("grad_norm_spike", Algorithm.grpo, _at("grad_norm", 8.0)),
    ("clip_frac_spike", Algorithm.grpo, _at("clip_frac", 0.05)),
    ("log_ratio_spike", Algorithm.grpo, _at("log_ratio_abs_max", 12.0)),
    ("reward_decline", Algorithm.grpo, _ramp("reward_mean", lambda d: 0.32 - 0.012 * d)),
    ("length_growth", Algorithm.grpo, _ramp("length_mean", lambda d: 310 * 1.04**d)),
    ("entropy_slide", Algorithm.grpo, _ramp("entropy_mean", lambda d: 0.6 * math.exp(-0.03 * d))),
    ("nonfinite_step", Algorithm.grpo, _at("loss", math.nan)),
    ("nonfinite_step", Algorithm.grpo, _at("grad_norm", math.inf)),
    ("entropy_floor", Algorithm.grpo, _at("entropy_mean", 0.01)),
    ("truncation_rate", Algorithm.grpo, _at("truncation_rate", 0.5, 5)),
    ("low_positive_frac", Algorithm.grpo, _at("positive_frac", 0.05, 15)),
    ("zero_std_groups", Algorithm.grpo, _at("zero_std_group_frac", 0.95, 3)),
    ("critic_explained_variance", Algorithm.ppo, _at("explained_variance", -0.3, 15)),
    ("clip_frac_range", Algorithm.grpo, _at("clip_frac", 0.3, 3)),
    ("clip_frac_range", Algorithm.gspo, _at("clip_frac", 0.6, 3)),
]


@pytest.mark.parametrize(("detector", "algorithm", "overrides"), CASES,
                         ids=[f"{c[0]}-{c[1].value}-{i}" for i, c in enumerate(CASES)])  # fmt: skip
def test_step_detector_fires_on_event_and_not_before(detector, algorithm, overrides) -> None:
    trace = Trace(seed=3, algorithm=algorithm, step_overrides=overrides, with_samples=False)
    replay = Replay()
    before = replay.run(trace, range(ONSET))
    assert [f for f in before if f.detector == detector] == []
    after = replay.run(trace, range(ONSET, ONSET + 60))
    hits = [f for f in after if f.detector == detector]
    assert hits, f"{detector} did not fire: {[(f.detector, f.step) for f in after]}"
    first = hits[0]
    assert first.step - ONSET <= 30
    assert first.threshold is not None and first.message
    assert first.severity.value in {"warning", "high", "critical"}


def test_healthy_traces_are_silent_for_every_step_detector() -> None:
    for seed, algorithm in [(11, Algorithm.grpo), (12, Algorithm.ppo), (13, Algorithm.gspo)]:
        replay = Replay()
        found = replay.run(Trace(seed=seed, algorithm=algorithm, with_samples=False), range(300))
        assert found == [], [(f.detector, f.step) for f in found]


def test_warmup_suppresses_an_early_spike() -> None:
    trace = Trace(seed=4, step_overrides={8: {"grad_norm": 50.0}}, with_samples=False)
    assert [f for f in Replay().run(trace, range(40)) if f.detector == "grad_norm_spike"] == []


def test_cooldown_silences_a_second_spike_soon_after() -> None:
    spikes = {40: {"grad_norm": 20.0}, 42: {"grad_norm": 20.0}, 60: {"grad_norm": 20.0}}
    trace = Trace(seed=5, step_overrides=spikes, with_samples=False)
    hits = [f.step for f in Replay().run(trace, range(80)) if f.detector == "grad_norm_spike"]
    assert hits == [40, 60]  # cooldown 5: step 42 is silenced, step 60 fires again


def test_hysteresis_fires_once_while_the_signal_stays_high() -> None:
    cfg = PolicyConfig(detectors={"truncation_rate": {"cooldown": 0}})
    high = {t: {"truncation_rate": 0.5} for t in range(20, 40)}
    high |= {t: {"truncation_rate": 0.2} for t in range(40, 50)}  # between rearm and threshold
    high |= {t: {"truncation_rate": 0.5} for t in range(50, 55)}  # no re-arm: still silent
    high |= {t: {"truncation_rate": 0.05} for t in range(55, 60)}  # re-armed
    high |= {t: {"truncation_rate": 0.5} for t in range(60, 65)}
    trace = Trace(seed=6, step_overrides=high, with_samples=False)
    replay = Replay(cfg=cfg)
    hits = [f.step for f in replay.run(trace, range(70)) if f.detector == "truncation_rate"]
    assert hits == [20, 60]


def test_gate_semantics() -> None:
    g = Gate()
    kw = {"warmup": 2, "cooldown": 3}
    assert not g.observe(0, exceeded=True, rearmed=False, **kw)  # warm-up
    assert not g.observe(1, exceeded=True, rearmed=False, **kw)
    assert g.observe(2, exceeded=True, rearmed=False, **kw)
    assert not g.observe(3, exceeded=True, rearmed=False, **kw)  # disarmed
    assert not g.observe(4, exceeded=False, rearmed=True, **kw)  # re-armed
    assert not g.observe(5, exceeded=True, rearmed=False, **kw)  # cool-down (3 steps)
    assert g.observe(6, exceeded=True, rearmed=False, **kw)
    assert not g.observe(7, exceeded=False, rearmed=True, **kw)
    assert g.observe(1, exceeded=True, rearmed=False, **kw)  # steps went back (rollback)


def test_non_finite_metrics_never_crash_nor_poison_the_windows() -> None:
    state = RunDetectorState()
    weird = {"kl_mean": math.nan, "grad_norm": math.inf, "clip_frac": -math.inf, "loss": math.nan,
             "entropy_mean": math.nan, "reward_mean": math.inf, "positive_frac": math.nan,
             "explained_variance": math.nan, "length_mean": -1.0, "log_ratio_abs_max": -2.0}
    trace = Trace(seed=8, algorithm=Algorithm.ppo, with_samples=False)
    found = []
    for t in range(60):
        metrics = weird if t % 3 == 0 else trace.update(t).metrics
        report = StepReport(step=t, phase=Phase.update, algorithm=Algorithm.ppo, metrics=metrics)
        found += evaluate_update(state, report, DEFAULT_POLICY)
    json.dumps(state.to_dict(), allow_nan=False)  # strict JSON
    assert all(math.isfinite(v) for w in state.windows.values() for v in w)
    assert {f.detector for f in found} == {"nonfinite_step"}
    assert sum(f.detector == "nonfinite_step" for f in found) == 20
    # still detects after the garbage
    spike = StepReport(step=61, phase=Phase.update, algorithm=Algorithm.ppo,
                       metrics={**trace.update(61).metrics, "grad_norm": 40.0})
    assert "grad_norm_spike" in {f.detector for f in evaluate_update(state, spike, DEFAULT_POLICY)}


def test_disabled_detector_is_silent() -> None:
    cfg = PolicyConfig(detectors={"nonfinite_step": {"enabled": False}})
    trace = Trace(seed=9, step_overrides=_at("loss", math.nan), with_samples=False)
    assert [f for f in Replay(cfg=cfg).run(trace, range(70)) if f.detector == "nonfinite_step"] == []


def _series(metric: str, fn, steps: range) -> dict[int, dict[str, float]]:
    return {t: {metric: fn(t)} for t in steps}


def _hits(trace: Trace, detector: str, steps: int, cfg: PolicyConfig | None = None) -> list[int]:
    replay = Replay(cfg=cfg) if cfg is not None else Replay()
    return [f.step for f in replay.run(trace, range(steps)) if f.detector == detector]


def test_low_positive_frac_holds_its_count_between_threshold_and_rearm() -> None:
    # Rare successes measured with noise: steps at 12% (between the 10% threshold and the 15%
    # re-arm) must not restart the count, or a run stuck near 10% is never reported.
    rare = _series("positive_frac", lambda t: 0.05 if t % 2 else 0.12, range(30, 60))
    hits = _hits(Trace(seed=31, step_overrides=rare, with_samples=False), "low_positive_frac", 60)
    assert hits and hits[0] - 30 <= 2 * 10
    # ... while a step back above re-arm restarts it: 9 low steps, one healthy, 9 low.
    broken = _series("positive_frac", lambda t: 0.3 if t == 39 else 0.05, range(30, 49))
    trace = Trace(seed=31, step_overrides=broken, with_samples=False)
    assert _hits(trace, "low_positive_frac", 49) == []


def test_zero_std_groups_needs_sustained_steps() -> None:
    blip = {50: {"zero_std_group_frac": 1.0}, 51: {"zero_std_group_frac": 0.9}}
    assert _hits(Trace(seed=32, step_overrides=blip, with_samples=False), "zero_std_groups", 70) == []
    held = _series("zero_std_group_frac", lambda t: 0.9, range(50, 53))
    assert _hits(Trace(seed=32, step_overrides=held, with_samples=False),
                 "zero_std_groups", 70) == [52]  # fmt: skip


def test_spike_needs_min_ratio_on_a_very_quiet_series() -> None:
    # A series quiet to 0.1%: ×1.6 is a huge z but not a grad-norm spike worth acting on.
    quiet = _series("grad_norm", lambda t: 0.5 * (1 + 0.001 * math.sin(t)), range(0, 80))
    quiet[60] = {"grad_norm": 0.8}
    assert _hits(Trace(seed=33, step_overrides=quiet, with_samples=False), "grad_norm_spike", 80) == []
    quiet[60] = {"grad_norm": 5.0}
    assert _hits(Trace(seed=33, step_overrides=quiet, with_samples=False),
                 "grad_norm_spike", 80) == [60]  # fmt: skip


def test_kl_spike_on_a_rising_trend_is_caught_and_a_gradual_climb_is_not() -> None:
    rng = np.random.default_rng(34)
    noise = np.exp(rng.normal(0.0, 0.05, 120))
    rising = _series("kl_mean", lambda t: 0.01 * 1.02**t * noise[t], range(0, 120))
    spiked = rising | {70: {"kl_mean": 4 * rising[70]["kl_mean"]}}
    assert _hits(Trace(seed=34, step_overrides=spiked, with_samples=False), "kl_spike", 90) == [70]
    # The same ×4 reached over 8 steps is a drift, not a spike.
    climb = rising | _series("kl_mean", lambda t: rising[t]["kl_mean"] * 4 ** ((t - 62) / 8),
                             range(62, 90))  # fmt: skip
    assert _hits(Trace(seed=34, step_overrides=climb, with_samples=False), "kl_spike", 90) == []


def test_drifts_follow_a_steady_healthy_trend() -> None:
    # Entropy falling 0.5% a step and responses growing 0.4% a step for 300 steps, with noise:
    # the healthy course of a reasoning run, not a slide.
    rng = np.random.default_rng(35)
    noise = np.exp(rng.normal(0.0, 0.02, (2, 300)))
    course = {t: {"entropy_mean": 0.9 * math.exp(-0.005 * t) * noise[0, t],
                  "length_mean": 300 * math.exp(0.004 * t) * noise[1, t]} for t in range(300)}
    found = Replay().run(Trace(seed=35, step_overrides=course, with_samples=False), range(300))
    assert [(f.detector, f.step) for f in found] == []


def test_a_version_1_state_loads_with_its_drift_and_spike_windows_reset() -> None:
    replay = Replay()
    replay.run(Trace(seed=36, with_samples=False), range(40))
    d = json.loads(json.dumps(replay.state.to_dict()))
    old = {**d, "version": 1,
           "cusums": {"entropy_slide": {"direction": -1, "s": 0.0, "mean": 0.6, "last": 0.6,
                                        "diffs": [0.01] * 30}}}  # the EWMA CUSUM of version 1
    state = RunDetectorState.from_dict(old)
    assert state.cusums == {} and state.windows == {}
    assert state.gates.keys() == replay.state.gates.keys()
    assert state.to_dict()["version"] == d["version"] == 2
