"""Seeded, labelled synthetic GRPO runs for the detector benchmark (`bench/detectors.py`).

A trace is a sequence of steps; each step is a pair of `StepReport` dicts (DESIGN §3): a
`rollout` report (64 samples in 8 groups of 8, `SampleStats` fields, the rollout's canonical
metrics) and an `update` report (loss, grad norm, clip fraction, ...). Non-finite numbers are
real floats (`math.nan`); `wire()` turns them into the "NaN"/"Infinity" strings of the wire.

Healthy runs: binary rewards whose success rate rises slowly (per-prompt difficulty from a
Beta), GRPO group-normalised advantages, KL to the reference ~0.01 → 0.05 with a drifting
AR(1) factor (2% of samples drift 3-8x further), entropy slowly falling (~0.8 → ~0.55),
response lengths lognormal around 350 tokens growing ~35% over the run (as in reasoning RL),
5% verbose answers 1.5-2.5x longer, capped at 1,024 (truncated there), grad norm lognormal
with a learning-rate warm-up transient and occasional x1.3-2 blips, clip fraction ≈ 1e-3.
`noise` scales the step-to-step noise of every drift and of grad norm / clip fraction (the
benchmark uses 0.5, 1, 2 and 3).

Event runs are a healthy run with ONE event injected from `onset` on, its size drawn per
trace (`event_params`: e.g. KL x4-10 for 2-5 steps, grad-norm spikes x8-30, entropy decaying
with a time constant of 4-8 steps); `Trace.catchers` names
the rlkeel detectors whose findings count as catching it, `Trace.rlwatch_catchers` those of
rlwatch (empty: rlwatch has no comparable detector).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "GROUPS",
    "GROUP_SIZE",
    "HEALTHY",
    "MAX_LENGTH",
    "RLWATCH_CATCHERS",
    "SCENARIOS",
    "Trace",
    "event_params",
    "make_traces",
    "wire",
]

GROUPS, GROUP_SIZE = 8, 8
MAX_LENGTH = 1024
HEALTHY = "healthy"

# scenario → rlkeel detectors whose findings count as catching it
SCENARIOS: dict[str, tuple[str, ...]] = {
    "length_explosion": ("sample_repetition_loop", "length_growth", "truncation_rate",
                         "sample_length_z", "sample_isolation_forest"),
    "kl_spike": ("kl_spike", "sample_kl_z"),
    "entropy_collapse": ("entropy_floor", "entropy_slide"),
    "reward_hacking": ("length_growth", "truncation_rate", "sample_length_z",
                       "sample_grad_share", "sample_isolation_forest"),
    "grad_norm_spikes": ("grad_norm_spike",),
    "nan": ("nonfinite_step", "sample_nonfinite"),
    "low_positive_frac": ("low_positive_frac", "reward_decline", "zero_std_groups"),
    "stale_clip_frac": ("clip_frac_range", "clip_frac_spike", "log_ratio_spike",
                        "sample_log_ratio_z"),
}  # fmt: skip

# scenario → rlwatch detectors that are comparable (empty: none)
RLWATCH_CATCHERS: dict[str, tuple[str, ...]] = {
    "length_explosion": (),  # rlwatch watches no length/truncation/repetition metric
    "kl_spike": ("kl_explosion",),
    "entropy_collapse": ("entropy_collapse",),
    "reward_hacking": ("reward_hacking", "reward_mean_drift"),
    "grad_norm_spikes": ("gradient_norm_spike",),
    "nan": ("loss_nan",),
    "low_positive_frac": (),  # no positive-fraction rule
    "stale_clip_frac": (),  # takes clip_fraction but no detector reads it
}


@dataclass
class Trace:
    scenario: str
    """`healthy` or a key of `SCENARIOS`."""
    seed: int
    noise: float
    steps: int
    onset: int | None = None
    """First step of the event (None: healthy)."""
    catchers: tuple[str, ...] = ()
    rlwatch_catchers: tuple[str, ...] = ()
    algorithm: str = "grpo"
    params: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.scenario}-s{self.seed}-n{self.noise:g}"

    @property
    def healthy(self) -> bool:
        return self.onset is None

    def reports(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(rollout, update) report dicts, step 0 .. steps-1. Deterministic in (seed, noise)."""
        yield from _generate(self)


def _ar(rng: np.random.Generator, prev: float, rho: float, sigma: float) -> float:
    return rho * prev + sigma * float(rng.standard_normal())


def event_params(scenario: str, rng: np.random.Generator) -> dict[str, float]:
    """The event's magnitudes, drawn per trace: detectors must not be tuned to one size."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    if scenario == "length_explosion":
        return {"loop_start": u(0.03, 0.06), "loop_rate": u(0.02, 0.04), "growth": u(1.02, 1.04)}
    if scenario == "kl_spike":
        return {"factor": u(4.0, 10.0), "duration": float(rng.integers(2, 6))}
    if scenario == "entropy_collapse":
        return {"tau": u(4.0, 8.0)}
    if scenario == "reward_hacking":
        return {"growth": u(1.03, 1.06), "ramp": u(10.0, 20.0)}
    if scenario == "grad_norm_spikes":
        return {"gap1": float(rng.integers(3, 6)), "gap2": float(rng.integers(7, 11)),
                "f0": u(8.0, 30.0), "f1": u(8.0, 30.0), "f2": u(8.0, 30.0)}  # fmt: skip
    if scenario == "low_positive_frac":
        return {"p": u(0.03, 0.07)}
    if scenario == "stale_clip_frac":
        return {"clip": u(0.25, 0.45), "lr_scale": u(2.5, 4.0)}
    return {}


def _generate(tr: Trace) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    key = sum(ord(c) * (i + 1) for i, c in enumerate(tr.scenario))
    rng = np.random.default_rng([tr.seed, int(tr.noise * 1000), key])
    T, nz, onset = tr.steps, tr.noise, tr.onset
    ev, P = tr.scenario, tr.params
    # slowly varying step-level factors (log space), AR(1)
    kl_f = ent_f = len_f = gn_f = 0.0
    p_shift = 0.0
    # event state
    ent_at_onset: float | None = None
    hack_len = 1.0
    spikes: dict[int, float] = {}
    if onset is not None and ev == "grad_norm_spikes":
        g1, g2 = int(P["gap1"]), int(P["gap2"])
        spikes = {onset: P["f0"], onset + g1: P["f1"], onset + g2: P["f2"]}
    for t in range(T):
        k = None if onset is None or t < onset else t - onset  # steps since onset
        frac = t / max(T, 1)
        kl_f = _ar(rng, kl_f, 0.95, 0.04 * nz)
        ent_f = _ar(rng, ent_f, 0.95, 0.015 * nz)
        len_f = _ar(rng, len_f, 0.95, 0.015 * nz)
        gn_f = _ar(rng, gn_f, 0.9, 0.05 * nz)
        p_shift = _ar(rng, p_shift, 0.95, 0.01 * nz)

        p = 0.35 + 0.25 * frac + p_shift
        kl_level = (0.01 + 0.04 * frac) * math.exp(kl_f)
        ent_level = 0.8 * math.exp(-0.4 * frac + ent_f)
        # Reasoning RL: responses get longer as the policy learns (healthy growth, ~35%).
        len_level = 350.0 * math.exp(0.3 * frac + len_f)
        loop_share = 0.0
        lr_scale = 1.0  # per-sample max |log ratio| multiplier
        if k is not None:
            if ev == "length_explosion":
                loop_share = min(0.6, P["loop_start"] + P["loop_rate"] * k)
                len_level *= P["growth"] ** min(k, 40)
            elif ev == "kl_spike" and k < int(P["duration"]):
                kl_level *= P["factor"]
            elif ev == "entropy_collapse":
                if ent_at_onset is None:
                    ent_at_onset = ent_level
                ent_level = ent_at_onset * math.exp(-k / P["tau"]) + 0.003
            elif ev == "reward_hacking":
                p = min(0.97, p + (0.97 - p) * min(1.0, (k + 1) / P["ramp"]))
                hack_len = min(hack_len * P["growth"], 3.5)
                len_level *= hack_len
            elif ev == "low_positive_frac":
                p = P["p"]
            elif ev == "stale_clip_frac":
                lr_scale = P["lr_scale"]
        p = min(max(p, 0.01), 0.99)

        # ---- samples
        conc = 4.0
        p_groups = rng.beta(p * conc, (1 - p) * conc, GROUPS)
        samples: list[dict[str, Any]] = []
        rewards = np.zeros(GROUPS * GROUP_SIZE)
        advs = np.zeros_like(rewards)
        zero_std = 0
        for g in range(GROUPS):
            r = (rng.random(GROUP_SIZE) < p_groups[g]).astype(float)
            sd = r.std()
            if sd == 0:
                zero_std += 1
            rewards[g * GROUP_SIZE:(g + 1) * GROUP_SIZE] = r
            advs[g * GROUP_SIZE:(g + 1) * GROUP_SIZE] = (r - r.mean()) / (sd + 1e-6)
        n = GROUPS * GROUP_SIZE
        lengths = rng.lognormal(math.log(len_level), 0.45, n)
        # Healthy long answers (hard prompts, verbose but correct reasoning): a heavy tail.
        verbose = rng.random(n) < 0.05
        lengths[verbose] *= rng.uniform(1.5, 2.5, int(verbose.sum()))
        loops = rng.random(n) < loop_share
        lengths[loops] = MAX_LENGTH
        lengths = np.minimum(np.round(lengths), MAX_LENGTH).astype(int)
        lengths = np.maximum(lengths, 1)
        truncated = lengths >= MAX_LENGTH
        repetition = rng.beta(2.0, 30.0, n)
        repetition[loops] = rng.beta(20.0, 4.0, int(loops.sum()))
        kls = rng.lognormal(math.log(kl_level), 0.5, n)
        drifted = rng.random(n) < 0.02  # a few samples drift further from the reference
        kls[drifted] *= rng.uniform(3.0, 8.0, int(drifted.sum()))
        log_ratio = rng.lognormal(math.log(0.15 * lr_scale), 0.3, n)
        entropy = ent_level * rng.lognormal(0.0, 0.15, n)
        entropy[loops] *= 0.3  # loops are low-entropy
        nan_now = ev == "nan" and k is not None and k < 2
        for i in range(n):
            samples.append({
                "sample_id": f"s{t}-{i}", "group_id": f"g{t}-{i // GROUP_SIZE}",
                "reward": float(rewards[i]), "advantage": float(advs[i]),
                "length": int(lengths[i]), "truncated": bool(truncated[i]),
                "kl": float(kls[i]), "log_ratio_max": float(log_ratio[i]),
                "entropy": float(entropy[i]), "repetition": float(repetition[i]),
            })  # fmt: skip
        if nan_now:  # a few samples with non-finite log-probs
            for i in range(0, n, 16):
                samples[i]["log_ratio_max"] = math.nan
                samples[i]["kl"] = math.nan
        rollout_metrics = {
            "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std(ddof=1)),
            "reward_min": float(rewards.min()), "reward_max": float(rewards.max()),
            "advantage_mean": float(advs.mean()), "advantage_std": float(advs.std(ddof=1)),
            "advantage_abs_max": float(np.abs(advs).max()),
            "kl_mean": float(kls.mean()), "kl_max": float(kls.max()),
            "entropy_mean": float(entropy.mean()),
            "length_mean": float(lengths.mean()), "length_max": float(lengths.max()),
            "truncation_rate": float(truncated.mean()),
            "repetition_mean": float(repetition.mean()),
            "zero_std_group_frac": zero_std / GROUPS,
            "positive_frac": float((rewards > 0).mean()),
        }  # fmt: skip
        if nan_now:
            rollout_metrics["kl_mean"] = math.nan
            rollout_metrics["kl_max"] = math.nan

        # ---- update
        # Learning-rate warm-up: larger gradients over the first steps; occasional healthy
        # blips (x1.3-2) on top of the lognormal noise.
        warm = 1.0 + 1.5 * math.exp(-t / 8.0)
        grad_norm = 0.3 * warm * math.exp(gn_f) * float(rng.lognormal(0.0, 0.12 * nz))
        if rng.random() < 0.02:
            grad_norm *= float(rng.uniform(1.3, 2.0))
        if t in spikes:
            grad_norm *= spikes[t]
        clip = 1e-3 * float(rng.lognormal(0.0, 0.3 * nz))
        if ev == "stale_clip_frac" and k is not None:
            clip = P["clip"] * float(rng.lognormal(0.0, 0.08))
        loss = float(rng.normal(0.0, 0.02))
        ppo_kl = 1e-4 * float(rng.lognormal(0.0, 0.3)) * (lr_scale ** 2)
        update_metrics = {
            "loss": loss, "policy_loss": loss, "grad_norm": grad_norm,
            "clip_frac": clip, "clip_frac_low": clip * 0.4, "clip_frac_high": clip * 0.6,
            "ppo_kl": ppo_kl,
            "log_ratio_abs_max": float(np.nanmax(log_ratio)) * float(rng.lognormal(0.0, 0.05)),
            "entropy_mean": float(entropy.mean()), "lr": 1e-6,
            "step_time_s": float(rng.normal(30.0, 1.0)),
            "tokens_per_s": float(lengths.sum() / 30.0),
        }  # fmt: skip
        if nan_now:
            update_metrics["loss"] = update_metrics["policy_loss"] = math.nan
            update_metrics["grad_norm"] = math.nan
        rollout = {"step": t, "phase": "rollout", "algorithm": tr.algorithm,
                   "metrics": rollout_metrics, "samples": samples}  # fmt: skip
        update = {"step": t, "phase": "update", "algorithm": tr.algorithm,
                  "metrics": update_metrics}  # fmt: skip
        yield rollout, update


def make_traces(*, seeds: list[int], noises: list[float], steps: int,
                scenarios: list[str] | None = None, healthy_per: int = 2) -> list[Trace]:  # fmt: skip
    """Healthy traces (`healthy_per` per seed and noise level) and one trace per scenario,
    seed and noise level, its onset drawn (seeded) in [0.45, 0.7] of the run."""
    if steps < 120:
        raise ValueError("steps must be at least 120 (detector warm-ups and a baseline)")
    names = list(SCENARIOS) if scenarios is None else scenarios
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; valid: {sorted(SCENARIOS)}")
    out: list[Trace] = []
    for seed in seeds:
        for noise in noises:
            for h in range(healthy_per):
                out.append(Trace(HEALTHY, seed * 100 + h, noise, steps))
            for name in names:
                rng = np.random.default_rng([seed, int(noise * 1000), *name.encode()])
                onset = int(rng.integers(int(0.45 * steps), int(0.7 * steps) + 1))
                out.append(Trace(name, seed, noise, steps, onset, SCENARIOS[name],
                                 RLWATCH_CATCHERS[name], params=event_params(name, rng)))  # fmt: skip
    return out


def wire(value: Any) -> Any:
    """A report dict with non-finite floats as the wire's "NaN"/"Infinity"/"-Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [wire(v) for v in value]
    return value
