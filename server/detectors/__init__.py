"""Detectors: per-sample outliers and per-step instabilities, over bounded per-run state.

Pure: no database, no HTTP. The service loads a run's `RunDetectorState`, calls
`evaluate_rollout` / `evaluate_update`, stores the findings and `state.to_dict()`, and calls
`refit_isolation_forest` off the request path when `forest_refit_due` says so.
"""

from rlkeel.server.detectors.catalog import DETECTORS, DetectorSpec
from rlkeel.server.detectors.findings import SEVERITY_RANK, Finding
from rlkeel.server.detectors.forest import forest_refit_due, refit_isolation_forest
from rlkeel.server.detectors.samples import RolloutEvaluation, evaluate_rollout
from rlkeel.server.detectors.state import RunDetectorState
from rlkeel.server.detectors.steps import evaluate_update

__all__ = [
    "DETECTORS",
    "SEVERITY_RANK",
    "DetectorSpec",
    "Finding",
    "RolloutEvaluation",
    "RunDetectorState",
    "evaluate_rollout",
    "evaluate_update",
    "forest_refit_due",
    "refit_isolation_forest",
]
