"""Golden outputs of the per-sample detectors and the forest scores on fixed inputs.

Speed work on the ingest path (column arrays, forest scoring compiled to flat arrays) must not
change a single decision: these reports' flags, findings and anomaly scores are pinned
exactly (floats stored as `float.hex`). The golden file was written by the code *before* that
work. Flags, detectors, messages and sample ids must match exactly; a float may differ from the
golden one in its last bits only (`ULPS`): numpy's vectorised `log`/`power` give the last bit
differently on CPUs with and without AVX-512, and the forest's scores go through them (the
forest's own bit-identity to scikit-learn is checked within one process below). A deliberate
change of detector logic regenerates it:

    .venv/bin/python -m tests.server.test_sample_detectors_golden --write
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest

from rlkeel.server.detectors import RunDetectorState, evaluate_rollout, forest_refit_due
from rlkeel.server.detectors import forest as forest_mod
from rlkeel.server.detectors.forest import refit_isolation_forest
from rlkeel.server.policy import DEFAULT_POLICY
from tests.server.test_detectors_traces import Trace

GOLDEN = Path(__file__).parent / "golden" / "sample_detectors.json"

# Outliers of every kind, NaNs and loops at fixed reports and sample positions.
OVERRIDES = {
    12: {0: {"length": 40_000}, 5: {"kl": 5.0}},
    25: {3: {"advantage": 40.0}, 9: {"log_ratio_max": 15.0}, 11: {"advantage": math.nan}},
    31: {2: {"truncated": True, "repetition": 0.9, "length": 2048}, 4: {"kl": math.inf}},
    38: {1: {"advantage": 2.5, "length": 9_000}, 7: {"kl": None, "entropy": None}},
    44: {6: {"entropy": 4.0, "repetition": 0.95, "kl": 0.5, "log_ratio_max": 2.0}},
    47: {0: {"repetition": None, "log_ratio_max": -math.inf}, 8: {"length": 0}},
}
REPORTS = 50
ULPS = 4  # the last-bit slack between CPUs' SIMD maths (a decision never turns on it)


def _num(x: float | None) -> str | None:
    return None if x is None else float(x).hex()


def _finding(f: Any) -> dict[str, Any]:
    return {"detector": f.detector, "severity": f.severity.value, "metric": f.metric,
            "value": _num(f.value), "baseline": _num(f.baseline),
            "threshold": _num(f.threshold), "step": f.step, "message": f.message,
            "sample_ids": list(f.sample_ids)}  # fmt: skip


def outputs() -> list[dict[str, Any]]:
    """Each report's flags, findings and forest scores, refitting whenever a refit is due."""
    trace = Trace(seed=31, sample_overrides=OVERRIDES)
    state = RunDetectorState(seed=0)
    out = []
    for t in range(REPORTS):
        report = trace.rollout(t)
        rows = [r for s in report.samples if (r := forest_mod.sample_features(s)) is not None]
        scores = forest_mod.anomaly_scores(state.forest, rows)
        ev = evaluate_rollout(state, report, DEFAULT_POLICY)
        out.append({"step": t, "flags": ev.sample_flags,
                    "findings": [_finding(f) for f in ev.findings],
                    "scores": None if scores is None else [x.hex() for x in scores.tolist()]})  # fmt: skip
        if forest_refit_due(state, DEFAULT_POLICY):
            refit_isolation_forest(state, DEFAULT_POLICY)
    return out


def _within_ulps(got: Any, golden: Any) -> bool:
    """Equal, except that two `float.hex` strings may be up to ULPS floats apart."""
    if isinstance(got, dict) and isinstance(golden, dict):
        return got.keys() == golden.keys() and all(_within_ulps(got[k], golden[k]) for k in got)
    if isinstance(got, list) and isinstance(golden, list):
        return len(got) == len(golden) and all(map(_within_ulps, got, golden))
    if isinstance(got, str) and isinstance(golden, str) and got.startswith(("0x", "-0x")):
        if got == golden:
            return True
        a, b = float.fromhex(got), float.fromhex(golden)
        return math.isfinite(a) and abs(a - b) <= ULPS * math.ulp(max(abs(a), abs(b)))
    return bool(got == golden)


def test_golden_comparison_allows_last_bits_only() -> None:
    x = 0.4375
    assert _within_ulps([{"v": (x + 2 * math.ulp(x)).hex()}], [{"v": x.hex()}])
    assert not _within_ulps([{"v": (x + 64 * math.ulp(x)).hex()}], [{"v": x.hex()}])
    assert not _within_ulps({"v": x.hex(), "s": "a"}, {"v": x.hex(), "s": "b"})
    assert not _within_ulps([x.hex()], [x.hex(), x.hex()])


def test_sample_detectors_match_the_golden_outputs() -> None:
    golden = json.loads(GOLDEN.read_text())
    got = outputs()
    assert any(o["scores"] for o in golden), "the golden trace must score with a forest"
    assert len(got) == len(golden)
    for g, o in zip(golden, got, strict=True):
        assert o["flags"] == g["flags"], f"report {g['step']}: flags differ from the golden ones"
        assert _within_ulps(o, g), f"report {g['step']} differs from the golden outputs"


def test_forest_scores_are_bit_identical_to_scikit_learn() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1500, 7))
    x[:, 6] = rng.random(1500) < 0.1  # a 0/1 feature, like `truncated`
    # (trees, max_samples, seed, max_features, rows scored): 350 rows are walked on several
    # threads, 40 on one; max_features < 1 gives trees fitted on a subset of the columns.
    for n_est, max_samples, seed, max_features, n_rows in (
        (100, 1024, 0, 1.0, 350), (37, 200, 3, 1.0, 350), (5, 16, 9, 1.0, 40),
        (23, 256, 4, 0.5, 350), (23, 256, 4, 0.5, 40),
    ):  # fmt: skip
        model = IsolationForest(n_estimators=n_est, max_samples=max_samples, random_state=seed,
                                max_features=max_features, n_jobs=1).fit(x)  # fmt: skip
        y = np.vstack([rng.normal(size=(300, 7)) * 4, x[:50]])[:n_rows]
        expected = -model.score_samples(y)
        assert forest_mod.fast_anomaly_scores(model, y).tobytes() == expected.tobytes()
        compiled = forest_mod.CompiledForest.from_model(model)
        assert any(c is not None for c in compiled.columns) == (max_features < 1)


if __name__ == "__main__" and "--write" in sys.argv:
    GOLDEN.write_text(json.dumps(outputs(), indent=0, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
