"""The wire contract v1 (DESIGN §3): every JSON body the service accepts or returns.

Non-finite numbers are data, not errors. JSON has no NaN or infinity, so on the wire a
non-finite metric travels as the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``; the bare
tokens ``NaN``/``Infinity`` that Python's ``json`` emits are accepted on input too. In Python
they are ordinary floats (``math.nan``, ``math.inf``).
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

__all__ = [
    "CANONICAL_STEP_METRICS",
    "MAX_INT",
    "MAX_JSON_DEPTH",
    "MAX_JSON_STRING_CHARS",
    "MAX_JSON_VALUES",
    "MAX_METRICS",
    "AckStatus",
    "Algorithm",
    "AuditRead",
    "AutomationUpdate",
    "AutomationMode",
    "Command",
    "CommandAck",
    "CommandCreate",
    "CommandDecision",
    "CommandKind",
    "CommandOrigin",
    "CommandStatus",
    "DroppedSample",
    "ErrorBody",
    "Finding",
    "FindingAck",
    "FindingStatus",
    "Metric",
    "ModelInfo",
    "Page",
    "Phase",
    "Run",
    "RunCreate",
    "RunStatus",
    "RunStatusUpdate",
    "SampleRead",
    "SampleStats",
    "Severity",
    "StepRead",
    "StepReport",
    "Verdict",
]

# Canonical step metrics (DESIGN §3). Extend freely, never rename.
CANONICAL_STEP_METRICS: tuple[str, ...] = (
    "reward_mean", "reward_std", "reward_min", "reward_max",
    "advantage_mean", "advantage_std", "advantage_abs_max",
    "kl_mean", "kl_max", "entropy_mean",
    "length_mean", "length_max", "truncation_rate", "repetition_mean",
    "zero_std_group_frac", "positive_frac",
    "loss", "policy_loss", "value_loss", "grad_norm",
    "clip_frac", "clip_frac_low", "clip_frac_high", "ppo_kl", "log_ratio_abs_max",
    "explained_variance", "lr", "step_time_s", "tokens_per_s", "dropped_frac",
)  # fmt: skip

def _dump_number(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


# A float that may be NaN or ±inf, encoded as a string on the wire when it is. pydantic-core
# itself accepts "NaN"/"Infinity"/"-Infinity" (any case) and the bare JSON tokens, natively:
# no Python validator runs per value, which matters at thousands of samples per report.
Metric = Annotated[
    float,
    PlainSerializer(_dump_number, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number"},
                {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]},
            ]
        }
    ),
]

# Limits on what one request may carry: anything past them is refused with a 422 naming the
# field before it reaches the detectors or the database.
MAX_INT = 2**62
"""Integers on the wire (steps, ids, counts) stay within ±2**62: bigint columns never overflow."""
MAX_JSON_DEPTH = 32
"""Free JSON (`config`, `extra`, command `params`, a policy) nests at most this deep."""
MAX_JSON_STRING_CHARS = 65_536
"""A string (or object key) in free JSON is at most this long."""
MAX_JSON_VALUES = 100_000
"""A free JSON field holds at most this many values (scalars, arrays and objects together)."""
MAX_METRICS = 4_096
"""A step report carries at most this many metrics."""


def _json_problem(value: Any, depth: int, path: str, budget: list[int]) -> str | None:
    budget[0] -= 1
    if budget[0] < 0:
        return f"more than {MAX_JSON_VALUES} values"
    if isinstance(value, dict | list):
        if depth >= MAX_JSON_DEPTH:
            return f"{path or 'value'}: nested deeper than {MAX_JSON_DEPTH} levels"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and len(key) > MAX_JSON_STRING_CHARS:
                return f"{path or 'value'}: a key is longer than {MAX_JSON_STRING_CHARS} characters"
            problem = _json_problem(item, depth + 1, f"{path}.{key}" if path else str(key), budget)
            if problem is not None:
                return problem
    elif isinstance(value, str):
        if len(value) > MAX_JSON_STRING_CHARS:
            return f"{path}: a string longer than {MAX_JSON_STRING_CHARS} characters"
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if abs(value) > MAX_INT:
            return f"{path}: an integer beyond ±2**62"
    elif isinstance(value, float) and not math.isfinite(value):
        budget[1] = 1  # non-finite: rewritten as a string (JSON, and PostgreSQL's jsonb, lack it)
    return None


def _nonfinite_as_strings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nonfinite_as_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nonfinite_as_strings(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return _dump_number(value)
    return value


def _flat_and_within_limits(value: dict[str, Any]) -> bool:
    """The common case (a sample's `extra`: a few finite numbers, flags, short strings), checked
    in one cheap pass; anything else takes the full walk."""
    if len(value) > MAX_JSON_VALUES:
        return False
    for key, item in value.items():
        kind = type(item)
        if kind is float:
            if not -math.inf < item < math.inf:  # False for NaN too
                return False
        elif kind is str:
            if len(item) > MAX_JSON_STRING_CHARS:
                return False
        elif kind is int:
            if not -MAX_INT <= item <= MAX_INT:
                return False
        elif kind is not bool and item is not None:
            return False
        if len(key) > MAX_JSON_STRING_CHARS:
            return False
    return True


def bounded_json(value: dict[str, Any]) -> dict[str, Any]:
    """Free JSON within the limits above, or a ValueError naming where it breaks them.
    NaN and ±inf inside it become the strings "NaN", "Infinity", "-Infinity"."""
    if value and not _flat_and_within_limits(value):
        budget = [MAX_JSON_VALUES + 1, 0]
        problem = _json_problem(value, 0, "", budget)
        if problem is not None:
            raise ValueError(problem)
        if budget[1]:
            return _nonfinite_as_strings(value)  # type: ignore[no-any-return]
    return value


FreeJSON = Annotated[dict[str, Any], AfterValidator(bounded_json)]
_Id = Annotated[str, Field(min_length=1, max_length=200)]
_Name = Annotated[str, Field(min_length=1, max_length=200)]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class _ReadSchema(BaseModel):
    # Responses tolerate fields added by newer servers.
    model_config = ConfigDict(extra="ignore", from_attributes=True, use_attribute_docstrings=True)


class Algorithm(StrEnum):
    ppo = "ppo"
    grpo = "grpo"
    dapo = "dapo"
    gspo = "gspo"
    gspo_token = "gspo_token"
    dr_grpo = "dr_grpo"
    cispo = "cispo"


class Phase(StrEnum):
    rollout = "rollout"
    update = "update"


class AutomationMode(StrEnum):
    auto = "auto"
    approve = "approve"
    observe = "observe"


class RunStatus(StrEnum):
    running = "running"
    stopped = "stopped"
    finished = "finished"
    failed = "failed"


class Severity(StrEnum):
    info = "info"
    warning = "warning"
    high = "high"
    critical = "critical"


class FindingStatus(StrEnum):
    open = "open"
    acknowledged = "acknowledged"
    snoozed = "snoozed"


class CommandKind(StrEnum):
    skip_step = "skip_step"
    switch_algorithm = "switch_algorithm"
    positive_emphasis = "positive_emphasis"
    scale_lr = "scale_lr"
    rollback = "rollback"
    set_max_length = "set_max_length"
    stop = "stop"


class CommandOrigin(StrEnum):
    policy = "policy"
    operator = "operator"


class CommandStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    applied = "applied"
    rejected = "rejected"
    failed = "failed"
    held = "held"
    approved = "approved"
    refused = "refused"
    expired = "expired"


class AckStatus(StrEnum):
    applied = "applied"
    rejected = "rejected"
    failed = "failed"


# --------------------------------------------------------------------------- runs


class ModelInfo(_Schema):
    name: _Name
    """Model name or path, e.g. `Qwen/Qwen2.5-0.5B` or `builtin-tiny`."""
    parameter_count: int | None = Field(default=None, ge=0, le=MAX_INT)
    """Number of parameters, when known."""
    moe: bool = False
    """True for mixture-of-experts models: they start on GSPO unless told otherwise."""


class RunCreate(_Schema):
    name: _Name
    """Human name of the run; not unique."""
    project: _Name = "default"
    """Project the run belongs to."""
    algorithm: Algorithm
    """Algorithm the run starts with."""
    model: ModelInfo
    """The policy model."""
    config: FreeJSON = Field(default_factory=dict)
    """Free trainer configuration, stored as given."""
    world_size: int = Field(default=1, ge=1, le=100_000)
    """Number of training processes."""
    verifiable_rewards: bool = True
    """True when rewards come from a verifier rather than a learned reward model."""
    automation: AutomationMode = AutomationMode.auto
    """Automation mode to start in: `auto`, `approve` or `observe` (operators may change it)."""


class RunStatusUpdate(_Schema):
    status: Literal["finished", "stopped", "failed"]
    """How the run ended: `finished` (its step budget), `stopped` (a `stop` command or a user),
    `failed` (an error in the trainer)."""
    detail: str | None = Field(default=None, max_length=2000)
    """Free words on why (e.g. the stop reason)."""


class Run(_ReadSchema):
    id: str
    """Run id, assigned by the service."""
    name: str
    """Human name of the run."""
    project: str
    """Project the run belongs to."""
    algorithm: Algorithm
    """Algorithm the run was registered with."""
    current_algorithm: Algorithm
    """Algorithm in force now (changes after an applied `switch_algorithm`)."""
    model: ModelInfo
    """The policy model."""
    config: dict[str, Any]
    """Trainer configuration as registered."""
    world_size: int
    """Number of training processes."""
    verifiable_rewards: bool
    """Whether rewards come from a verifier."""
    automation: AutomationMode
    """`auto`: commands go out; `approve`: held for an operator; `observe`: findings only."""
    status: RunStatus
    """Lifecycle state of the run."""
    last_step: int | None
    """Highest step reported so far."""
    created_at: datetime
    """When the run was registered."""
    last_report_at: datetime | None
    """When the last step report arrived."""


# --------------------------------------------------------------------------- steps


class SampleStats(_Schema):
    sample_id: _Id
    """Unique id of the sample within its step."""
    group_id: _Id
    """The prompt the sample answers; samples of one prompt form a group."""
    reward: Metric
    """Scalar reward of the response."""
    advantage: Metric
    """Advantage used for the update (per sequence, or the mean over tokens)."""
    length: int = Field(ge=0, le=10_000_000)
    """Number of response tokens."""
    truncated: bool = False
    """True when the response hit the length cap without an end-of-sequence token."""
    kl: Metric | None = None
    """Mean per-token k3 estimate of KL to the reference policy, when there is one."""
    log_ratio_max: Metric | None = None
    """Max |log π_θ/π_old| over the response tokens, when known."""
    entropy: Metric | None = None
    """Mean per-token entropy of the policy on the response."""
    repetition: float | None = Field(default=None, ge=0.0, le=1.0)
    """Share of repeated n-grams in the response, 0..1."""
    extra: FreeJSON = Field(default_factory=dict)
    """Free per-sample fields (reward parts, EOS seen, ...)."""


class StepReport(_Schema):
    step: int = Field(ge=0, le=MAX_INT)
    """Training step, from 0."""
    phase: Phase
    """`rollout`: before the update, answered with a filter verdict; `update`: after it."""
    algorithm: Algorithm
    """Algorithm in force for this step."""
    metrics: dict[Annotated[str, Field(min_length=1, max_length=200)], Metric] = Field(
        default_factory=dict, max_length=MAX_METRICS
    )
    """Step metrics, name → number (NaN/±inf allowed). Canonical names: see DESIGN §3."""
    samples: list[SampleStats] = Field(default_factory=list)
    """Per-sample statistics; sent with the `rollout` phase."""


class DroppedSample(_ReadSchema):
    sample_id: str
    """The sample to remove from the batch before the update."""
    reasons: list[str]
    """Why: the detectors that flagged it."""


class Command(_ReadSchema):
    id: int
    """Command id."""
    run_id: str
    """The run it is for."""
    kind: CommandKind
    """What to do."""
    params: dict[str, Any]
    """Parameters of the kind (e.g. `{"to": "gspo"}` for `switch_algorithm`)."""
    reason: dict[str, Any]
    """Why: `{"text": ..., "finding_ids": [...]}`."""
    origin: CommandOrigin
    """`policy` (automatic) or `operator` (by hand)."""
    status: CommandStatus
    """Lifecycle state."""
    effective_step: int | None
    """First step at which the command applies; none means the next step boundary."""
    applied_step: int | None = None
    """Step at which the trainer applied it, once acknowledged."""
    detail: str | None = None
    """The trainer's or operator's last words on it."""
    created_at: datetime
    """When it was issued."""
    updated_at: datetime
    """When its status last changed."""


class Verdict(_ReadSchema):
    step: int
    """The step the verdict answers."""
    phase: Phase = Phase.rollout
    """The phase of the report it answers."""
    drop: list[DroppedSample] = Field(default_factory=list)
    """Samples to remove from the batch; they leave every normaliser."""
    skip_step: bool = False
    """Skip this update altogether."""
    weights: dict[str, float] | None = None
    """Optional per-sample loss multipliers, by sample id."""
    commands: list[Command] = Field(default_factory=list)
    """Commands now due for this run, to apply at the step boundary and acknowledge."""


class StepRead(_ReadSchema):
    run_id: str
    """The run."""
    step: int
    """Training step."""
    phase: Phase
    """Report phase."""
    algorithm: Algorithm
    """Algorithm in force."""
    metrics: dict[str, Metric]
    """Step metrics as reported (non-finite values preserved)."""
    sample_count: int
    """Number of per-sample rows stored for this report."""
    verdict: Verdict
    """The verdict the service answered."""
    created_at: datetime
    """When the report was stored."""


class SampleRead(_ReadSchema):
    step: int
    """Training step."""
    sample_id: str
    """Sample id."""
    group_id: str
    """Group (prompt) id."""
    reward: Metric | None
    """Reward."""
    advantage: Metric | None
    """Advantage."""
    length: int
    """Response tokens."""
    truncated: bool
    """Hit the length cap."""
    kl: Metric | None
    """Mean per-token k3 to the reference."""
    log_ratio_max: Metric | None
    """Max |log-ratio|."""
    entropy: Metric | None
    """Mean per-token entropy."""
    repetition: float | None
    """Share of repeated n-grams."""
    extra: dict[str, Any]
    """Free per-sample fields."""
    flags: list[str]
    """Detector flags raised on this sample."""
    dropped: bool
    """Whether the verdict dropped it."""


# --------------------------------------------------------------------------- findings


class Finding(_ReadSchema):
    id: int
    """Finding id."""
    run_id: str
    """The run."""
    step: int
    """Step at which it was raised."""
    detector: str
    """Detector name."""
    severity: Severity
    """How bad."""
    metric: str | None
    """Signal the detector watched."""
    value: Metric | None
    """Observed value."""
    baseline: Metric | None
    """What the detector expected."""
    threshold: Metric | None
    """Threshold crossed."""
    message: str
    """Human sentence."""
    sample_ids: list[str]
    """Samples involved, for per-sample detectors."""
    status: FindingStatus
    """open, acknowledged or snoozed."""
    snoozed_until: datetime | None = None
    """Snoozed until then: the detector is silent for this run."""
    created_at: datetime
    """When it was raised."""


class FindingAck(_Schema):
    snooze_seconds: int | None = Field(default=None, ge=1, le=30 * 24 * 3600)
    """Silence this detector for the run for this long; none acknowledges only."""
    note: str | None = Field(default=None, max_length=2000)
    """Free note for the audit log."""


# --------------------------------------------------------------------------- commands


class CommandCreate(_Schema):
    kind: CommandKind
    """What to do."""
    params: FreeJSON = Field(default_factory=dict)
    """Parameters of the kind."""
    effective_step: int | None = Field(default=None, ge=0, le=MAX_INT)
    """First step at which it applies; none: the next step boundary."""
    reason: str | None = Field(default=None, max_length=2000)
    """Why the operator issued it."""


class CommandAck(_Schema):
    status: AckStatus
    """applied, rejected or failed."""
    step: int = Field(ge=0, le=MAX_INT)
    """Step at which the trainer acted."""
    detail: str | None = Field(default=None, max_length=4000)
    """What happened, in words."""


class CommandDecision(_Schema):
    note: str | None = Field(default=None, max_length=2000)
    """Why the operator approved or refused it (kept in the audit log)."""


# --------------------------------------------------------------------------- operators


class AutomationUpdate(_Schema):
    mode: AutomationMode
    """`auto`: commands go out; `approve`: held for an operator; `observe`: findings only."""


class AuditRead(_ReadSchema):
    id: int
    """Entry id."""
    at: datetime
    """When it happened."""
    actor: str
    """Who: `role:key-name#key-id`."""
    action: str
    """What, e.g. `command.issue`, `run.automation`, `policy.replace`, `finding.ack`."""
    target_type: str
    """Kind of object acted on: run, command, finding, webhook."""
    target_id: str
    """Its id."""
    before: dict[str, Any] | None
    """State before the action."""
    after: dict[str, Any] | None
    """State after the action."""


# --------------------------------------------------------------------------- shared

T = TypeVar("T")


class Page(_ReadSchema, Generic[T]):
    items: list[T]
    """This page."""
    next_after: int | None = None
    """Pass as `after` for the next page; none on the last page."""


class ErrorBody(_ReadSchema):
    error: str
    """Error class name, e.g. `ValidationError`, `NotFound`."""
    detail: str
    """Human sentence."""
    fields: list[str] = Field(default_factory=list)
    """Offending fields, as dotted paths (e.g. `samples.3.length`)."""


PhaseLiteral = Literal["rollout", "update"]
