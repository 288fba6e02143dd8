"""Synthetic traces (seeded) for the detector and policy tests, and the healthy-run checks."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from rlkeel.client.schemas import Algorithm, Phase, SampleStats, Severity, StepReport
from rlkeel.server.detectors import (
    SEVERITY_RANK,
    Finding,
    RunDetectorState,
    evaluate_rollout,
    evaluate_update,
    forest_refit_due,
    refit_isolation_forest,
)
from rlkeel.server.policy import DEFAULT_POLICY, PolicyConfig

GROUPS, G = 4, 8


@dataclass
class Trace:
    """A healthy run with realistic noise; `overrides[step]` patches metrics or samples."""

    seed: int = 0
    algorithm: Algorithm = Algorithm.grpo
    step_overrides: dict[int, dict[str, float]] = field(default_factory=dict)
    sample_overrides: dict[int, dict[int, dict]] = field(default_factory=dict)
    with_samples: bool = True

    def rollout(self, t: int) -> StepReport:
        rng = np.random.default_rng([self.seed, t, 1])
        p = 0.3 + 0.3 * min(t, 1000) / 1000
        samples = []
        for g in range(GROUPS):
            rewards = (rng.random(G) < p).astype(float)
            std = rewards.std(ddof=1)
            adv = (rewards - rewards.mean()) / (std + 1e-6)
            for i in range(G):
                length = int(min(2048, rng.lognormal(math.log(300 + 0.1 * t), 0.35)))
                s = dict(sample_id=f"s{g}-{i}", group_id=f"g{g}", reward=float(rewards[i]),
                         advantage=float(adv[i]), length=length, truncated=length >= 2048,
                         kl=float(rng.lognormal(math.log(0.01 * (1 + t / 500)), 0.5)),
                         log_ratio_max=float(rng.lognormal(math.log(0.3), 0.3)),
                         entropy=float(0.6 * rng.lognormal(0, 0.2)),
                         repetition=float(rng.beta(2, 20)))
                s.update(self.sample_overrides.get(t, {}).get(g * G + i, {}))
                samples.append(SampleStats(**s))
        rew = np.array([s.reward for s in samples])
        adv = np.array([s.advantage for s in samples])
        lens = np.array([s.length for s in samples])
        zero_std = np.mean([rew[g * G:(g + 1) * G].std() == 0 for g in range(GROUPS)])
        metrics = {"reward_mean": float(rew.mean()), "positive_frac": float((adv > 0).mean()),
                   "length_mean": float(lens.mean()), "length_max": float(lens.max()),
                   "truncation_rate": float(np.mean([s.truncated for s in samples])),
                   "zero_std_group_frac": float(zero_std)}
        return StepReport(step=t, phase=Phase.rollout, algorithm=self.algorithm, metrics=metrics,
                          samples=samples if self.with_samples else [])

    def update(self, t: int) -> StepReport:
        rng = np.random.default_rng([self.seed, t, 2])
        clip = 0.15 if self.algorithm == Algorithm.gspo else 1e-3
        m = {"kl_mean": float(rng.lognormal(math.log(0.01 * (1 + t / 500)), 0.15)),
             "grad_norm": float(rng.lognormal(math.log(0.5), 0.25)),
             "clip_frac": float(rng.lognormal(math.log(clip), 0.3)),
             "log_ratio_abs_max": float(rng.lognormal(0.0, 0.25)),
             "entropy_mean": float(0.6 * math.exp(-t / 3000) * rng.lognormal(0, 0.03)),
             "loss": float(rng.normal(0.0, 0.05)), "lr": 1e-6}
        if self.algorithm == Algorithm.ppo:
            m["explained_variance"] = float(np.clip(rng.normal(0.5, 0.1), -1, 1))
            m["value_loss"] = float(rng.lognormal(math.log(0.1), 0.2))
        m.update(self.step_overrides.get(t, {}))
        return StepReport(step=t, phase=Phase.update, algorithm=self.algorithm, metrics=m)


@dataclass
class Replay:
    state: RunDetectorState = field(default_factory=RunDetectorState)
    cfg: PolicyConfig = field(default_factory=lambda: DEFAULT_POLICY)
    findings: list[Finding] = field(default_factory=list)
    flags: dict[int, dict[str, list[str]]] = field(default_factory=dict)

    def step(self, trace: Trace, t: int, *, roundtrip: bool = False) -> list[Finding]:
        if roundtrip:
            self.state = RunDetectorState.from_dict(json.loads(json.dumps(self.state.to_dict())))
        ev = evaluate_rollout(self.state, trace.rollout(t), self.cfg)
        got = ev.findings + evaluate_update(self.state, trace.update(t), self.cfg)
        if ev.sample_flags:
            self.flags[t] = ev.sample_flags
        if forest_refit_due(self.state, self.cfg):  # the service does this off the request path
            refit_isolation_forest(self.state, self.cfg)
        self.findings.extend(got)
        return got

    def run(self, trace: Trace, steps: range) -> list[Finding]:
        out: list[Finding] = []
        for t in steps:
            out += self.step(trace, t)
        return out


def alarms(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if SEVERITY_RANK[f.severity] >= SEVERITY_RANK[Severity.warning]]


def test_healthy_run_of_1000_steps_has_at_most_one_false_alarm() -> None:
    replay = Replay()
    replay.run(Trace(seed=7), range(1000))
    assert len(alarms(replay.findings)) <= 1, [(f.detector, f.step) for f in replay.findings]
    flagged = sum(len(v) for v in replay.flags.values())
    assert flagged <= 0.002 * 1000 * GROUPS * G  # per-sample flags stay rare on healthy data
