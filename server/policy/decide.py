"""From findings to actions, with bounds (DESIGN §4).

`decide` is pure given its inputs: it reads and updates a bounded `PolicyState` and returns a
`Decision`. Cool-downs and windows count *update reports* (`PolicyState.tick`), not step
numbers, so they keep their meaning when a rollback makes step numbers go back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rlkeel.client.schemas import Algorithm, CommandKind, Phase
from rlkeel.server.detectors.findings import SEVERITY_RANK, Finding
from rlkeel.server.policy.config import TOKEN_LEVEL, PolicyConfig

__all__ = ["Decision", "PolicyState", "ProposedCommand", "RunInfo", "decide"]

_MAX_EVENTS = 1000  # bound on remembered event ticks per kind


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
    rollbacks: int = 0
    last_rollback_tick: int | None = None
    stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"tick": self.tick, "started": self.started,
                "last_command_tick": dict(sorted(self.last_command_tick.items())),
                "last_switch_tick": self.last_switch_tick,
                "algorithms_left": list(self.algorithms_left),
                "instability_ticks": list(self.instability_ticks),
                "grad_spike_ticks": list(self.grad_spike_ticks),
                "last_healthy_step": self.last_healthy_step, "rollbacks": self.rollbacks,
                "last_rollback_tick": self.last_rollback_tick,
                "stopped": self.stopped}  # fmt: skip

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
                   stopped=bool(d["stopped"]))  # fmt: skip


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
           cfg: PolicyConfig, batch_size: int | None = None) -> Decision:  # fmt: skip
    """Turn one report's findings and sample flags into drops, a skip and commands.

    `batch_size` is the number of samples in the report (defaults to the flagged count, which
    only matters when every sample is flagged). Call once per report, in report order.
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
        if len(sample_flags) > cfg.max_drop_frac * n:
            decision.skip_step = True
        else:
            decision.drop = [(sid, list(r)) for sid, r in sample_flags.items()]

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
    trouble = idx_of(*cfg.rollback_detectors)
    if trouble:
        names = ", ".join(sorted({findings[i].detector for i in trouble}))
        target = st.last_healthy_step
        if st.rollbacks >= cfg.max_rollbacks or target is None or target >= step:
            why = (f"{names} again after {st.rollbacks} rollback(s)" if st.rollbacks
                   else f"{names} with no rollback left or no healthy step to roll back to")  # fmt: skip
            b.issue(CommandKind.stop, {"reason": why}, f"step {step}: {why}", trouble)
            st.stopped = True
            return Decision(decision.drop, decision.skip_step, b.commands)
        if b.issue(CommandKind.rollback, {"to_step": target},
                   f"{names} at step {step}: roll back to the last healthy step {target}",
                   trouble):  # fmt: skip
            st.rollbacks += 1
            st.last_rollback_tick = st.tick

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
    if low_pos:
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
    if phase == Phase.update:
        worst = max((SEVERITY_RANK[f.severity] for f in findings), default=-1)
        if worst <= SEVERITY_RANK[cfg.healthy_max_severity] and not trouble:
            st.last_healthy_step = step
    decision.commands = b.commands
    return decision
