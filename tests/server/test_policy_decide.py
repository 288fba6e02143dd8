"""Policy: bounds on drops, cool-downs, switches, rollback/stop, and its configuration."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from rlkeel.client.schemas import Algorithm, CommandKind, Phase, Severity
from rlkeel.server.detectors import DETECTORS, Finding
from rlkeel.server.policy import (
    DEFAULT_POLICY,
    PolicyConfig,
    PolicyState,
    RunInfo,
    decide,
    policy_table_markdown,
    policy_table_rows,
)

GRPO = RunInfo(algorithm=Algorithm.grpo)


def f(detector: str, step: int, severity: Severity = Severity.warning) -> Finding:
    return Finding(detector, severity, "m", 1.0, 0.0, 0.5, step, f"{detector} fired")


def run(state: PolicyState, info: RunInfo, step: int, findings=(), flags=None,
        cfg: PolicyConfig = DEFAULT_POLICY, phase=Phase.update, batch_size=None,
        metrics=None, samples=None):  # fmt: skip
    return decide(state, info, step, phase, list(findings), flags or {}, cfg,
                  batch_size=batch_size, metrics=metrics, samples=samples)  # fmt: skip


def kinds(decision) -> list[CommandKind]:
    return [c.kind for c in decision.commands]


def test_drops_flagged_samples_within_the_cap_and_skips_past_it() -> None:
    st = PolicyState()
    flags = {"a": ["sample_length_z"], "b": ["sample_repetition_loop", "sample_grad_share"]}
    d = run(st, GRPO, 0, flags=flags, phase=Phase.rollout, batch_size=8)
    assert d.drop == [("a", ["sample_length_z"]), ("b", ["sample_repetition_loop",
                                                         "sample_grad_share"])]  # fmt: skip
    assert not d.skip_step
    flags["c"] = ["sample_kl_z"]  # 3/8 > 0.25
    d = run(st, GRPO, 1, flags=flags, phase=Phase.rollout, batch_size=8)
    assert d.skip_step and d.drop == []
    cfg = PolicyConfig(max_drop_frac=0.5)
    d = run(st, GRPO, 2, flags=flags, phase=Phase.rollout, batch_size=8, cfg=cfg)
    assert not d.skip_step and len(d.drop) == 3


def test_scale_lr_on_repeated_grad_spikes_with_cooldown() -> None:
    st, issued = PolicyState(), []
    for t in range(300):
        d = run(st, GRPO, t, [f("grad_norm_spike", t)] if t % 10 == 0 else [])
        issued += [(t, c) for c in d.commands]
    steps = [t for t, c in issued]
    assert all(c.kind == CommandKind.scale_lr and c.params == {"factor": 0.5} for _, c in issued)
    assert steps[0] == 10  # second spike within the window
    assert all(b - a >= DEFAULT_POLICY.cooldowns[CommandKind.scale_lr] for a, b in
               zip(steps, steps[1:], strict=False))  # fmt: skip
    assert issued[0][1].finding_indexes == [0]


def test_switch_to_gspo_after_sustained_token_level_instability_once() -> None:
    st = PolicyState()
    d1 = run(st, GRPO, 10, [f("kl_spike", 10)])
    d2 = run(st, GRPO, 11, [f("grad_norm_spike", 11), f("clip_frac_spike", 11)])
    assert kinds(d1) == [] and kinds(d2) == []
    d3 = run(st, GRPO, 12, [f("log_ratio_spike", 12), f("kl_spike", 12)])
    assert kinds(d3) == [CommandKind.switch_algorithm]
    assert d3.commands[0].params == {"to": "gspo"} and d3.commands[0].finding_indexes == [0, 1]
    # the trainer has not applied it yet: no second switch within the window
    for t in range(13, 20):
        assert kinds(run(st, GRPO, t, [f("kl_spike", t)] * 3)) == []
    # applied: GSPO is sequence-level, instability there never switches anywhere
    gspo = RunInfo(algorithm=Algorithm.gspo)
    for t in range(20, 2000):
        assert CommandKind.switch_algorithm not in kinds(run(st, gspo, t, [f("kl_spike", t)] * 3))


def test_never_switches_back_and_one_switch_per_window() -> None:
    cfg = PolicyConfig(switch_window=100)
    st = PolicyState()
    ppo = RunInfo(algorithm=Algorithm.ppo, verifiable_rewards=True)
    d = run(st, ppo, 5, [f("critic_explained_variance", 5)], cfg=cfg)
    assert [(c.kind, c.params) for c in d.commands] == [(CommandKind.switch_algorithm,
                                                         {"to": "grpo"})]  # fmt: skip
    # now on GRPO: instability inside the window does not switch again
    for t in range(6, 60):
        assert kinds(run(st, GRPO, t, [f("kl_spike", t)] * 3, cfg=cfg)) == []
    # after the window it may switch forward to GSPO
    switched = [t for t in range(60, 200)
                if kinds(run(st, GRPO, t, [f("kl_spike", t)] * 3, cfg=cfg))]  # fmt: skip
    assert switched == [105]
    assert st.algorithms_left == ["ppo", "grpo"]
    # a PPO critic complaint can never lead back to an algorithm left before
    st2 = PolicyState(algorithms_left=["grpo"])
    assert kinds(run(st2, ppo, 1, [f("critic_explained_variance", 1)], cfg=cfg)) == []


def test_ppo_critic_switch_needs_verifiable_rewards() -> None:
    learned = RunInfo(algorithm=Algorithm.ppo, verifiable_rewards=False)
    assert kinds(run(PolicyState(), learned, 5, [f("critic_explained_variance", 5)])) == []
    cfg = PolicyConfig(ppo_critic_switch=False)
    ppo = RunInfo(algorithm=Algorithm.ppo)
    assert kinds(run(PolicyState(), ppo, 5, [f("critic_explained_variance", 5)], cfg=cfg)) == []


@pytest.mark.parametrize("algorithm", [Algorithm.grpo, Algorithm.dapo, Algorithm.ppo,
                                       Algorithm.dr_grpo, Algorithm.cispo])  # fmt: skip
def test_moe_runs_start_on_gspo(algorithm) -> None:
    moe = RunInfo(algorithm=algorithm, moe=True)
    d = run(PolicyState(), moe, 0, phase=Phase.rollout)
    assert [(c.kind, c.params, c.finding_indexes) for c in d.commands] == [
        (CommandKind.switch_algorithm, {"to": "gspo"}, [])]
    st = PolicyState()
    run(st, moe, 0, phase=Phase.rollout)
    assert kinds(run(st, moe, 1)) == []  # only at the first report
    off = PolicyConfig(moe_start_on_gspo=False)
    assert kinds(run(PolicyState(), moe, 0, cfg=off)) == []
    assert kinds(run(PolicyState(), RunInfo(Algorithm.gspo, moe=True), 0)) == []
    assert kinds(run(PolicyState(), RunInfo(algorithm), 0)) == []


def test_positive_emphasis_when_positives_are_rare_after_the_warm_up() -> None:
    st = PolicyState()
    # a run that starts with few successes is not one whose successes became rare
    assert kinds(run(st, GRPO, 0, [f("low_positive_frac", 0)])) == []
    for t in range(1, 30):
        run(st, GRPO, t)
    d = run(st, GRPO, 30, [f("kl_spike", 30), f("low_positive_frac", 30)])
    assert [(c.kind, c.params, c.finding_indexes) for c in d.commands] == [
        (CommandKind.positive_emphasis, {"mode": "advantage_scale", "factor": 2.0}, [1])]


def test_rollback_to_last_healthy_step_then_stop_when_trouble_repeats() -> None:
    st = PolicyState()
    for t in range(10):
        assert kinds(run(st, GRPO, t, [f("reward_decline", t, Severity.info)])) == []
    run(st, GRPO, 10, [f("truncation_rate", 10)])  # warning: not healthy
    d = run(st, GRPO, 11, [f("nonfinite_step", 11, Severity.critical)])
    assert [(c.kind, c.params) for c in d.commands] == [(CommandKind.rollback, {"to_step": 9})]
    for t in range(10, 30):  # resumed from step 9
        run(st, GRPO, t)
    d = run(st, GRPO, 30, [f("entropy_floor", 30, Severity.high)])
    # stop, but on the last good weights: roll back first
    assert [(c.kind, c.params.get("to_step")) for c in d.commands] == [
        (CommandKind.rollback, 29), (CommandKind.stop, None)]
    assert d.commands[1].finding_indexes == [0]
    assert "rollback" in d.commands[1].params["reason"]
    assert run(st, GRPO, 31, [f("nonfinite_step", 31)]).commands == []  # stopped: silent


def test_trouble_before_any_healthy_step_stops() -> None:
    d = run(PolicyState(), GRPO, 0, [f("nonfinite_step", 0, Severity.critical)])
    assert kinds(d) == [CommandKind.stop]


def test_rollback_budget_returns_after_the_stop_window() -> None:
    cfg = PolicyConfig(stop_window=50)
    st = PolicyState()
    for t in range(5):
        run(st, GRPO, t, cfg=cfg)
    assert kinds(run(st, GRPO, 5, [f("nonfinite_step", 5)], cfg=cfg)) == [CommandKind.rollback]
    for t in range(5, 80):
        run(st, GRPO, t, cfg=cfg)
    assert kinds(run(st, GRPO, 80, [f("nonfinite_step", 80)], cfg=cfg)) == [CommandKind.rollback]


def test_policy_state_round_trips_through_json() -> None:
    st = PolicyState()
    for t in range(40):
        run(st, GRPO, t, [f("grad_norm_spike", t), f("kl_spike", t)] if t % 7 == 0 else [])
    copy = PolicyState.from_dict(json.loads(json.dumps(st.to_dict())))
    for t in range(40, 200):
        findings = [f("grad_norm_spike", t), f("kl_spike", t)] if t % 7 == 0 else []
        assert run(st, GRPO, t, findings) == run(copy, GRPO, t, findings)
    assert copy.to_dict() == st.to_dict()


def test_config_validation_is_strict_and_clear() -> None:
    with pytest.raises(ValidationError, match="extra"):
        PolicyConfig.model_validate({"max_drop_fraction": 0.3})
    with pytest.raises(ValidationError, match="unknown detector.*valid"):
        PolicyConfig.model_validate({"detectors": {"kl_spiky": {"threshold": 3}}})
    with pytest.raises(ValidationError, match="rearm"):
        PolicyConfig.model_validate({"detectors": {"kl_spike": {"rearm": 9.0}}})
    with pytest.raises(ValidationError, match="params.*unknown"):
        PolicyConfig.model_validate({"detectors": {"kl_spike": {"params": {"window": 3}}}})
    with pytest.raises(ValidationError, match="max_drop_frac"):
        PolicyConfig.model_validate({"max_drop_frac": 1.5})
    with pytest.raises(ValidationError, match="extra"):
        PolicyConfig.model_validate({"detectors": {"kl_spike": {"treshold": 3}}})
    cfg = PolicyConfig.model_validate({"detectors": {"kl_spike": {"threshold": 8.0}},
                                       "cooldowns": {"scale_lr": 7}})  # fmt: skip
    assert cfg.detector("kl_spike").threshold == 8.0
    assert cfg.detector("kl_spike").rearm == 3.0  # the rest keeps its defaults
    assert cfg.cooldowns[CommandKind.scale_lr] == 7
    assert cfg.cooldowns[CommandKind.rollback] == DEFAULT_POLICY.cooldowns[CommandKind.rollback]
    again = PolicyConfig.model_validate(json.loads(cfg.model_dump_json()))
    assert again == cfg


def test_readme_table_comes_from_the_catalogue() -> None:
    rows = policy_table_rows()
    assert [r[0] for r in rows] == [d.name for d in DETECTORS]
    assert all(len(r) == 4 and all(r) for r in rows)
    cfg = PolicyConfig(detectors={"kl_spike": {"threshold": 9.0}, "entropy_floor":
                                  {"enabled": False}})  # fmt: skip
    table = dict((r[0], r[2]) for r in policy_table_rows(cfg))
    assert table["kl_spike"].startswith("> 9") and table["entropy_floor"] == "disabled"
    assert policy_table_markdown().count("\n") == len(DETECTORS) + 2


def healthy(reward: float = 0.7, length: float = 6.0, cap: float = 16.0) -> dict[str, float]:
    return {"reward_mean": reward, "length_mean": length, "max_new_tokens": cap}


def test_set_max_length_near_the_healthy_length_when_responses_explode() -> None:
    st = PolicyState()
    for t in range(30):
        assert kinds(run(st, GRPO, t, metrics=healthy(length=5.0 + (t % 3)))) == []
    assert st.length_ref == pytest.approx(6.0, abs=0.5)  # the healthy mean length
    d = run(st, GRPO, 30, [f("truncation_rate", 30)], metrics=healthy(length=14.0))
    assert [(c.kind, c.params, c.finding_indexes) for c in d.commands] == [
        (CommandKind.set_max_length, {"tokens": math.ceil(2 * st.length_ref)}, [0])]
    # cool-down, then no command while the cap is already at or below the target
    assert kinds(run(st, GRPO, 31, [f("length_growth", 31)], metrics=healthy(14.0))) == []
    for t in range(32, 200):
        d = run(st, GRPO, t, [f("length_growth", t)], metrics=healthy(length=9.0, cap=12.0))
        assert kinds(d) == []
    # nothing known about healthy lengths yet: no cap to choose
    assert kinds(run(PolicyState(), GRPO, 0, [f("length_growth", 0)])) == []


def test_reward_collapse_after_instability_rolls_back_before_the_fall() -> None:
    st = PolicyState()
    for t in range(20):
        assert kinds(run(st, GRPO, t, metrics=healthy())) == []
    run(st, GRPO, 20, [f("kl_spike", 20)], metrics=healthy(0.6))  # the lr blew up
    assert kinds(run(st, GRPO, 21, metrics=healthy(0.4))) == []  # mean 0.57 of the last 3
    d = run(st, GRPO, 22, [f("reward_decline", 22)], metrics=healthy(0.1))  # mean 0.37 < 0.42
    # the fall is seen over steps 20–22: roll back to a healthy step 5 before it, cut the lr
    assert [(c.kind, c.params, c.finding_indexes) for c in d.commands] == [
        (CommandKind.rollback, {"to_step": 15}, [0]),
        (CommandKind.scale_lr, {"factor": 0.1}, [0])]  # applied after the rollback
    assert "reward collapse" in d.commands[0].reason_text
    # the trainer applies the rollback a step or two later: those reports judge nothing
    assert kinds(run(st, GRPO, 23, [f("nonfinite_step", 23)], metrics=healthy(0.05))) == []
    assert kinds(run(st, GRPO, 24, metrics=healthy(0.05))) == []
    for t in range(15, 23):  # resumed from step 15's weights, healthy
        assert kinds(run(st, GRPO, t, metrics=healthy())) == []
    run(st, GRPO, 23, [f("kl_spike", 23)], metrics=healthy(0.5))  # the fault is still there
    run(st, GRPO, 24, metrics=healthy(0.2))
    d = run(st, GRPO, 25, metrics=healthy(0.2))
    assert [(c.kind, c.params.get("to_step")) for c in d.commands] == [
        (CommandKind.rollback, 18), (CommandKind.stop, None)]  # fell over 23–25: 23 - 5
    assert st.stopped


def test_kl_far_above_its_healthy_level_is_evidence_enough() -> None:
    st = PolicyState()
    for t in range(20):
        run(st, GRPO, t, metrics={**healthy(), "kl_mean": 0.01})
    for t, (reward, kl) in enumerate([(0.5, 0.02), (0.3, 0.3)], start=20):
        assert kinds(run(st, GRPO, t, metrics={**healthy(reward), "kl_mean": kl})) == []
    d = run(st, GRPO, 22, metrics={**healthy(0.2), "kl_mean": 0.3})  # 30× the healthy KL
    assert kinds(d) == [CommandKind.rollback, CommandKind.scale_lr]
    assert d.commands[0].finding_indexes == []  # the policy's own rule: no finding behind it


def test_a_reward_that_falls_before_the_policy_moves_or_with_stale_samples_is_no_collapse() -> None:
    # rewards turned sparse at 20: the policy drifts only later (KL up at 30)
    st = PolicyState()
    for t in range(20):
        run(st, GRPO, t, metrics={**healthy(), "kl_mean": 0.01})
    for t in range(20, 60):
        kl = 0.2 if t >= 30 else 0.01
        assert kinds(run(st, GRPO, t, metrics={**healthy(0.08), "kl_mean": kl})) == []
    # stale rollouts at 20: the reward falls with a log-ratio spike — the data is wrong
    st = PolicyState()
    for t in range(20):
        run(st, GRPO, t, metrics=healthy())
    for t in range(20, 26):
        findings = [f("log_ratio_spike", t), f("kl_spike", t)] if t == 20 else []
        d = run(st, GRPO, t, findings, metrics=healthy(0.1))
        assert CommandKind.rollback not in kinds(d)


def test_a_reward_that_falls_with_no_sign_of_instability_is_not_a_collapse() -> None:
    st = PolicyState()  # e.g. rewards turned sparse: the policy did not move
    for t in range(20):
        run(st, GRPO, t, metrics=healthy())
    for t in range(20, 120):
        d = run(st, GRPO, t, [f("reward_decline", t)] if t == 25 else [], metrics=healthy(0.05))
        assert kinds(d) == []
    # before the baseline has seen collapse_warmup healthy steps nothing counts either
    st = PolicyState()
    run(st, GRPO, 0, [f("kl_spike", 0)], metrics=healthy())
    for t in range(1, 10):
        assert kinds(run(st, GRPO, t, metrics=healthy(0.01 if t > 3 else 0.7))) == []


def test_flagged_samples_with_negative_advantage_are_kept_not_dropped() -> None:
    flags = {"loop": ["sample_repetition_loop"], "hack": ["sample_repetition_loop"],
             "nan": ["sample_nonfinite"], "far": ["sample_kl_z"]}  # fmt: skip
    samples = {"loop": (-0.4, 16), "hack": (2.1, 16), "nan": (-0.3, 5), "far": (0.0, 6),
               **{f"ok{i}": (0.1 * (i % 3 - 1), 6) for i in range(12)}}  # fmt: skip
    # GRPO: a looping sample pushed down is the signal against loops; keep it, weight 1
    d = run(PolicyState(), GRPO, 0, flags=flags, phase=Phase.rollout, batch_size=16,
            samples=samples)  # fmt: skip
    assert d.drop == [("hack", ["sample_repetition_loop"]), ("nan", ["sample_nonfinite"])]
    assert d.weights is None and not d.skip_step
    # token-level DAPO: kept too, but weighted down to the median length (6 of 16 tokens)
    dapo = RunInfo(algorithm=Algorithm.dapo)
    d = run(PolicyState(), dapo, 0, flags=flags, phase=Phase.rollout, batch_size=16,
            samples=samples)  # fmt: skip
    assert [sid for sid, _ in d.drop] == ["hack", "nan"]
    assert d.weights == {"loop": pytest.approx(6 / 16)}
    # only what is dropped counts toward max_drop_frac
    many = {f"ok{i}": ["sample_kl_z"] for i in range(12)}
    d = run(PolicyState(), GRPO, 0, flags=many, phase=Phase.rollout, batch_size=16,
            samples=samples)  # fmt: skip
    assert not d.skip_step and len(d.drop) == 4  # the positive ones
    # switched off, or without the samples: every flagged sample goes, as before
    off = PolicyConfig(keep_negative_outliers=False)
    d = run(PolicyState(), GRPO, 0, flags=flags, phase=Phase.rollout, batch_size=16,
            samples=samples, cfg=off)  # fmt: skip
    assert len(d.drop) == 4
