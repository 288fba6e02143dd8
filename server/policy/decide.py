"""From findings to actions, with bounds (DESIGN §4).

`decide` is pure given its inputs: it reads and updates a bounded `PolicyState` and returns a
`Decision`. Cool-downs and windows count *update reports* (`PolicyState.tick`), not step
numbers, so they keep their meaning when a rollback makes step numbers go back.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rlkeel.client.schemas import Algorithm, CommandKind, Phase
from rlkeel.server.detectors.findings import SEVERITY_RANK, Finding
from rlkeel.server.policy.config import TOKEN_LEVEL, PolicyConfig

__all__ = ["Decision", "PolicyState", "ProposedCommand", "RunInfo", "decide"]

_MAX_EVENTS = 1000  # bound on remembered event ticks per kind
_HEALTHY_KEPT = 64  # recent healthy steps remembered
_EWMA = 0.1  # weight of a new healthy step in the reward/length baselines
# Losses whose default aggregation counts tokens (ALGORITHMS.md): a long sample weighs more.
_TOKEN_AGGREGATED = (Algorithm.dapo, Algorithm.ppo, Algorithm.dr_grpo, Algorithm.cispo)


@dataclass(frozen=True)
class RunInfo:
    algorithm: Algorithm
    """Algorithm in force now."""
    moe: bool = False
    verifiable_rewards: bool = True


@dataclass(frozen=True)
class ProposedCommand:
    kind: CommandKind
    params: dict[str, Any]
    reason_text: str
    finding_indexes: list[int]
    """Indexes into the `findings` passed to `decide` that caused it."""


@dataclass
class Decision:
    drop: list[tuple[str, list[str]]] = field(default_factory=list)
    skip_step: bool = False
    commands: list[ProposedCommand] = field(default_factory=list)
    weights: dict[str, float] | None = None
    """Per-sample loss multipliers for flagged samples that are kept (see `decide`)."""


@dataclass
class PolicyState:
    tick: int = 0
    """Update reports seen."""
    started: bool = False
    last_command_tick: dict[str, int] = field(default_factory=dict)
    last_switch_tick: int | None = None
    algorithms_left: list[str] = field(default_factory=list)
    """Algorithms switched away from: never switched back to."""
    instability_ticks: deque[int] = field(default_factory=lambda: deque(maxlen=_MAX_EVENTS))
    grad_spike_ticks: deque[int] = field(default_factory=lambda: deque(maxlen=_MAX_EVENTS))
    last_healthy_step: int | None = None
    healthy_steps: deque[int] = field(default_factory=lambda: deque(maxlen=_HEALTHY_KEPT))
    """The most recent healthy update steps (rollback targets before a late-seen collapse)."""
    rollbacks: int = 0
    last_rollback_tick: int | None = None
    stopped: bool = False
    reward_ref: float | None = None
    """EWMA of reward_mean over healthy steps: the baseline a collapse is measured against."""
    length_ref: float | None = None
    """EWMA of length_mean over healthy steps: what set_max_length caps against."""
    kl_ref: float | None = None
    """EWMA of kl_mean over healthy steps."""
    healthy_seen: int = 0
    recent_rewards: list[tuple[int, float]] = field(default_factory=list)
    """(step, reward_mean) of the last `collapse_sustain` update reports."""
    evidence_steps: deque[int] = field(default_factory=lambda: deque(maxlen=_HEALTHY_KEPT))
    """Steps with a sign that the policy itself moved (collapse evidence)."""
    stale_steps: deque[int] = field(default_factory=lambda: deque(maxlen=_HEALTHY_KEPT))
    """Steps with a sign that the samples were not the policy's own (stale rollouts)."""
    low_since: int | None = None
    """First step of the first low-reward window of the current fall."""

    def to_dict(self) -> dict[str, Any]:
        return {"tick": self.tick, "started": self.started,
                "last_command_tick": dict(sorted(self.last_command_tick.items())),
                "last_switch_tick": self.last_switch_tick,
                "algorithms_left": list(self.algorithms_left),
                "instability_ticks": list(self.instability_ticks),
                "grad_spike_ticks": list(self.grad_spike_ticks),
                "last_healthy_step": self.last_healthy_step, "rollbacks": self.rollbacks,
                "last_rollback_tick": self.last_rollback_tick,
                "stopped": self.stopped, "healthy_steps": list(self.healthy_steps),
                "reward_ref": self.reward_ref, "length_ref": self.length_ref,
                "kl_ref": self.kl_ref, "healthy_seen": self.healthy_seen,
                "recent_rewards": [list(x) for x in self.recent_rewards],
                "evidence_steps": list(self.evidence_steps),
                "stale_steps": list(self.stale_steps), "low_since": self.low_since}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyState:
        return cls(tick=int(d["tick"]), started=bool(d["started"]),
                   last_command_tick={k: int(v) for k, v in d["last_command_tick"].items()},
                   last_switch_tick=d["last_switch_tick"],
                   algorithms_left=list(d["algorithms_left"]),
                   instability_ticks=deque(d["instability_ticks"], maxlen=_MAX_EVENTS),
                   grad_spike_ticks=deque(d["grad_spike_ticks"], maxlen=_MAX_EVENTS),
                   last_healthy_step=d["last_healthy_step"], rollbacks=int(d["rollbacks"]),
                   last_rollback_tick=d["last_rollback_tick"],
                   stopped=bool(d["stopped"]),
                   # states stored before these fields existed start them empty
                   healthy_steps=deque(d.get("healthy_steps", []), maxlen=_HEALTHY_KEPT),
                   reward_ref=d.get("reward_ref"), length_ref=d.get("length_ref"),
                   healthy_seen=int(d.get("healthy_seen", 0)),
                   kl_ref=d.get("kl_ref"),
                   recent_rewards=[(int(a), float(b)) for a, b in d.get("recent_rewards", [])],
                   evidence_steps=deque(d.get("evidence_steps", []), maxlen=_HEALTHY_KEPT),
                   stale_steps=deque(d.get("stale_steps", []), maxlen=_HEALTHY_KEPT),
                   low_since=d.get("low_since"))  # fmt: skip


class _Builder:
    def __init__(self, state: PolicyState, cfg: PolicyConfig) -> None:
        self.state, self.cfg = state, cfg
        self.commands: list[ProposedCommand] = []

    def cooled(self, kind: CommandKind) -> bool:
        last = self.state.last_command_tick.get(kind.value)
        return last is None or self.state.tick - last >= self.cfg.cooldowns.get(kind, 0)

    def issue(self, kind: CommandKind, params: dict[str, Any], text: str,
              idx: list[int]) -> bool:  # fmt: skip
        if not self.cooled(kind) or any(c.kind == kind for c in self.commands):
            return False
        self.commands.append(ProposedCommand(kind, params, text, sorted(set(idx))))
        self.state.last_command_tick[kind.value] = self.state.tick
        return True

    def switch(self, current: Algorithm, to: Algorithm, text: str, idx: list[int]) -> bool:
        st = self.state
        if current == to or to.value in st.algorithms_left:
            return False  # never back and forth
        if st.last_switch_tick is not None and st.tick - st.last_switch_tick < self.cfg.switch_window:
            return False  # one switch per window
        if not self.issue(CommandKind.switch_algorithm, {"to": to.value}, text, idx):
            return False
        st.algorithms_left.append(current.value)
        st.last_switch_tick = st.tick
        return True


def _recent(ticks: deque[int], now: int, window: int) -> int:
    return sum(1 for t in ticks if now - t < window)


def decide(policy_state: PolicyState, run_info: RunInfo, step: int, phase: Phase | str,
           findings: list[Finding], sample_flags: dict[str, list[str]],
           cfg: PolicyConfig, batch_size: int | None = None,
           metrics: Mapping[str, float] | None = None,
           samples: Mapping[str, tuple[float | None, int]] | None = None) -> Decision:  # fmt: skip
    """Turn one report's findings and sample flags into drops, a skip and commands.

    `batch_size` is the number of samples in the report (defaults to the flagged count, which
    only matters when every sample is flagged). `metrics` are the step's metrics (the update
    report's, with its rollout's): the reward and length baselines behind collapse rollbacks
    and set_max_length come from them. `samples` maps a rollout's sample ids to (advantage,
    length): with it, flagged samples whose advantage is ≤ 0 are kept (`keep_negative_outliers`)
    — down-weighted to a typical length under token-level losses — instead of dropped.
    Call once per report, in report order.
    """
    st = policy_state
    phase = Phase(phase)
    decision = Decision()
    if st.stopped:
        return decision
    b = _Builder(st, cfg)
    current = run_info.algorithm
    if phase == Phase.update:
        st.tick += 1

    # Drops, bounded: past max_drop_frac the whole step is skipped instead.
    if sample_flags:
        n = max(batch_size or 0, len(sample_flags))
        to_drop, decision.weights = _split_flagged(sample_flags, samples, cfg, current)
        if len(to_drop) > cfg.max_drop_frac * n:
            decision.skip_step = True
        else:
            decision.drop = [(sid, list(r)) for sid, r in to_drop.items()]

    by_detector: dict[str, list[int]] = {}
    for i, f in enumerate(findings):
        by_detector.setdefault(f.detector, []).append(i)

    def idx_of(*names: str) -> list[int]:
        return [i for n in names for i in by_detector.get(n, [])]

    # MoE runs start on GSPO.
    if not st.started:
        st.started = True
        if cfg.moe_start_on_gspo and run_info.moe and current in TOKEN_LEVEL:
            b.switch(current, Algorithm.gspo, f"MoE model on token-level {current.value}: "
                     "start on GSPO (sequence-level ratios are steadier for MoE)", [])  # fmt: skip

    # Rollback on non-finite values or collapse; stop when it repeats after a rollback.
    if st.last_rollback_tick is not None and st.tick - st.last_rollback_tick >= cfg.stop_window:
        st.rollbacks = 0  # healthy long enough: the rollback budget comes back
    values = metrics or {}
    # Reports right after a rollback may still come from the broken weights (the trainer
    # applies commands at a later step boundary): judge nothing on them.
    settling = (st.last_rollback_tick is not None
                and st.tick - st.last_rollback_tick < cfg.rollback_grace)  # fmt: skip
    if settling:
        st.recent_rewards.clear()
        st.low_since = None
    evidence = idx_of(*cfg.collapse_evidence)
    if phase == Phase.update and not settling:
        if evidence or _kl_moved(st, cfg, values):
            st.evidence_steps.append(step)
        if idx_of(*cfg.stale_detectors):
            st.stale_steps.append(step)
    trouble = [] if settling else idx_of(*cfg.rollback_detectors)
    collapsed, reward_collapse = bool(trouble), False
    names = ", ".join(sorted({findings[i].detector for i in trouble}))
    target = st.last_healthy_step
    if (not collapsed and not settling and phase == Phase.update
            and _reward_collapsed(st, cfg, step, values)):  # fmt: skip
        collapsed = reward_collapse = True
        trouble = sorted(set(evidence) | set(idx_of("reward_decline")))
        mean = sum(r for _, r in st.recent_rewards) / len(st.recent_rewards)
        since = st.recent_rewards[0][0]
        names = (f"reward collapse (reward_mean {mean:.3g} over steps {since}–{step} < "
                 f"{cfg.collapse_ratio:g} × the healthy {st.reward_ref:.3g}, and the policy "
                 "moved)")  # fmt: skip
        target = max((h for h in st.healthy_steps if h <= since - cfg.rollback_margin),
                     default=min(st.healthy_steps, default=None))  # fmt: skip
        st.recent_rewards.clear()
        st.low_since = None
    if collapsed:
        if st.rollbacks >= cfg.max_rollbacks or target is None or target >= step:
            why = (f"{names} again after {st.rollbacks} rollback(s)" if st.rollbacks
                   else f"{names} with no rollback left or no healthy step to roll back to")  # fmt: skip
            if target is not None and target < step:
                # Stop on the last good weights, not on the broken ones.
                b.commands.append(ProposedCommand(
                    CommandKind.rollback, {"to_step": target},
                    f"{why}: roll back to the healthy step {target} before stopping", trouble))  # fmt: skip
            b.issue(CommandKind.stop, {"reason": why}, f"step {step}: {why}", trouble)
            st.stopped = True
            return Decision(decision.drop, decision.skip_step, b.commands, decision.weights)
        if b.issue(CommandKind.rollback, {"to_step": target},
                   f"{names} at step {step}: roll back to the last healthy step {target}",
                   trouble):  # fmt: skip
            st.rollbacks += 1
            st.last_rollback_tick = st.tick
            if reward_collapse and cfg.collapse_lr_factor < 1.0:
                # After the rollback (commands apply in order): the restored lr, cut.
                b.issue(CommandKind.scale_lr, {"factor": cfg.collapse_lr_factor},
                        f"{names}: the policy moved too far too fast; scale the learning rate "
                        f"by {cfg.collapse_lr_factor:g} after the rollback", trouble)  # fmt: skip

    # Length explosion → cap the response length near the healthy length.
    long = idx_of(*cfg.length_detectors)
    if long and st.length_ref is not None:
        cap = max(cfg.min_max_length, math.ceil(cfg.max_length_factor * st.length_ref))
        current = values.get("max_new_tokens")
        if current is None or not math.isfinite(current) or cap < current:
            b.issue(CommandKind.set_max_length, {"tokens": cap},
                    f"responses grow ({', '.join(sorted({findings[i].detector for i in long}))}): "
                    f"cap them at {cap} tokens, {cfg.max_length_factor:g} × the healthy mean "
                    f"length {st.length_ref:.3g}", long)  # fmt: skip

    # Sustained token-level instability → GSPO.
    unstable = idx_of(*cfg.instability_detectors)
    if unstable and phase == Phase.update:
        st.instability_ticks.extend([st.tick] * len(unstable))
    if unstable and current in TOKEN_LEVEL:
        n = _recent(st.instability_ticks, st.tick, cfg.instability_window)
        if n >= cfg.instability_count:
            b.switch(current, cfg.switch_target,
                     f"{n} token-level instability findings in {cfg.instability_window} "
                     f"steps on {current.value}: switch to sequence-level GSPO", unstable)  # fmt: skip

    # PPO critic unhealthy with verifiable rewards → critic-free GRPO.
    critic = idx_of("critic_explained_variance")
    if critic and cfg.ppo_critic_switch and current == Algorithm.ppo and run_info.verifiable_rewards:
        b.switch(current, Algorithm.grpo, "PPO critic keeps failing (explained variance) and "
                 "rewards are verifiable: switch to critic-free GRPO", critic)  # fmt: skip

    # Rare successes: emphasise positives.
    low_pos = idx_of("low_positive_frac")
    if low_pos and st.tick > cfg.positive_emphasis_warmup:
        b.issue(CommandKind.positive_emphasis, {"mode": cfg.positive_emphasis_mode,
                "factor": cfg.positive_emphasis_factor},
                "positive fraction stays under 10%: emphasise positive samples", low_pos)  # fmt: skip

    # Repeated grad-norm spikes → smaller learning rate.
    spikes = idx_of("grad_norm_spike")
    if spikes:
        st.grad_spike_ticks.extend([st.tick] * len(spikes))
        n = _recent(st.grad_spike_ticks, st.tick, cfg.lr_spike_window)
        if n >= cfg.lr_spike_count:
            b.issue(CommandKind.scale_lr, {"factor": cfg.lr_factor},
                    f"{n} grad-norm spikes in {cfg.lr_spike_window} steps: scale the "
                    f"learning rate by {cfg.lr_factor:g}", spikes)  # fmt: skip

    # Remember the last healthy update step: the rollback target.
    if phase == Phase.update and not settling:
        worst = max((SEVERITY_RANK[f.severity] for f in findings), default=-1)
        if worst <= SEVERITY_RANK[cfg.healthy_max_severity] and not collapsed:
            st.last_healthy_step = step
            reward = _finite(values, "reward_mean")
            low = (reward is not None and st.reward_ref is not None
                   and reward < cfg.collapse_ratio * st.reward_ref)  # fmt: skip
            if not low:  # a fallen reward is no baseline
                st.healthy_steps.append(step)
                _update_baselines(st, values)
    decision.commands = b.commands
    return decision


def _split_flagged(flags: dict[str, list[str]],
                   samples: Mapping[str, tuple[float | None, int]] | None, cfg: PolicyConfig,
                   algorithm: Algorithm) -> tuple[dict[str, list[str]], dict[str, float] | None]:  # fmt: skip
    """(samples to drop, weights of flagged samples kept).

    A flagged sample with advantage ≤ 0 is pushed *down* by the update: dropping it removes
    the very signal against loops and overlong answers (the policy then drifts into them). It
    is kept — unless a number in it is non-finite — and, under a token-level loss where a long
    sample's tokens outweigh the rest, weighted to the batch's median length."""
    if not cfg.keep_negative_outliers or not samples:
        return dict(flags), None
    drop: dict[str, list[str]] = {}
    kept: list[str] = []
    for sid, reasons in flags.items():
        adv = samples.get(sid, (None, 0))[0]
        if "sample_nonfinite" in reasons or adv is None or not math.isfinite(adv) or adv > 0:
            drop[sid] = reasons
        else:
            kept.append(sid)
    if not kept or algorithm not in _TOKEN_AGGREGATED:
        return drop, None
    lengths = sorted(length for _, length in samples.values())
    median = lengths[len(lengths) // 2] if lengths else 0
    weights = {sid: min(1.0, median / samples[sid][1]) for sid in kept if samples[sid][1] > 0}
    return drop, {sid: w for sid, w in weights.items() if w < 1.0} or None


def _finite(values: Mapping[str, float], name: str) -> float | None:
    v = values.get(name)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _update_baselines(st: PolicyState, values: Mapping[str, float]) -> None:
    st.healthy_seen += 1
    for attr, name in (("reward_ref", "reward_mean"), ("length_ref", "length_mean"),
                       ("kl_ref", "kl_mean")):
        x = _finite(values, name)
        if x is not None:
            ref = getattr(st, attr)
            setattr(st, attr, x if ref is None else (1 - _EWMA) * ref + _EWMA * x)


def _kl_moved(st: PolicyState, cfg: PolicyConfig, values: Mapping[str, float]) -> bool:
    kl = _finite(values, "kl_mean")
    return kl is not None and st.kl_ref is not None and kl > max(
        cfg.collapse_kl_min, cfg.collapse_kl_factor * st.kl_ref)


def _reward_collapsed(st: PolicyState, cfg: PolicyConfig, step: int,
                      values: Mapping[str, float]) -> bool:  # fmt: skip
    """The mean reward of the last `collapse_sustain` updates under `collapse_ratio` × its
    healthy baseline, and the policy itself moved first: a sign of it (a `collapse_evidence`
    finding, or KL to the reference far above its healthy level) in the few steps before the
    fall began, or at its first step.

    Not a collapse: a reward that fell *before* any such sign (the rewards changed — e.g.
    turned sparse — and the policy drifts after), or a fall that comes with stale samples
    (`stale_detectors`: the data, not the policy, is wrong)."""
    reward = _finite(values, "reward_mean")
    if reward is None:
        return False
    st.recent_rewards.append((step, reward))
    del st.recent_rewards[:-cfg.collapse_sustain]
    if (st.reward_ref is None or st.reward_ref <= 0 or st.healthy_seen < cfg.collapse_warmup
            or len(st.recent_rewards) < cfg.collapse_sustain):  # fmt: skip
        return False
    mean = sum(r for _, r in st.recent_rewards) / len(st.recent_rewards)
    if mean >= cfg.collapse_ratio * st.reward_ref:
        st.low_since = None
        return False
    if st.low_since is None:
        st.low_since = st.recent_rewards[0][0]
    fell = st.low_since
    moved = any(fell - cfg.collapse_sustain - 2 <= e <= fell + 1 for e in st.evidence_steps)
    stale = any(fell - cfg.collapse_sustain <= t <= step for t in st.stale_steps)
    return moved and not stale
