"""Policy: from findings to bounded actions (drops, skips, commands), and its configuration."""

from rlkeel.server.policy.config import DEFAULT_POLICY, DetectorSettings, PolicyConfig
from rlkeel.server.policy.decide import Decision, PolicyState, ProposedCommand, RunInfo, decide
from rlkeel.server.policy.table import policy_table_markdown, policy_table_rows

__all__ = [
    "DEFAULT_POLICY",
    "Decision",
    "DetectorSettings",
    "PolicyConfig",
    "PolicyState",
    "ProposedCommand",
    "RunInfo",
    "decide",
    "policy_table_markdown",
    "policy_table_rows",
]
