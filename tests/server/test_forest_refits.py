"""The IsolationForest is refit off the request path, and still deterministically."""

from __future__ import annotations

import random
import threading

import pytest

from rlkeel.server.detectors import forest as forest_mod
from tests.server.helpers import RUN, rollout, sample


async def test_refits_run_in_the_background_and_the_forest_flags_outliers(http, app, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    request_path_fits: list[str] = []
    real_fit = forest_mod._fit

    def recording_fit(*args, **kwargs):  # type: ignore[no-untyped-def]
        request_path_fits.append(threading.current_thread().name)
        return real_fit(*args, **kwargs)

    # Patched in this process only: the spawned worker process fits with the real function.
    monkeypatch.setattr(forest_mod, "_fit", recording_fit)
    forest_mod._CACHE.clear()
    run = (await http.post("/v1/runs", json=RUN)).json()["id"]
    flagged: set[str] = set()
    rng = random.Random(0)
    for step in range(20):
        body = rollout(step, n=64)
        for i, s in enumerate(body["samples"]):
            # Every feature varies a little: a forest cannot split on a constant feature.
            s.update(sample(i, kl=abs(rng.gauss(0.02, 0.005)), entropy=abs(rng.gauss(1.0, 0.1)),
                            log_ratio_max=abs(rng.gauss(0.1, 0.03)), length=int(rng.gauss(100, 15)),
                            repetition=rng.random() * 0.1, advantage=rng.gauss(0, 1)))  # fmt: skip
            s["sample_id"] = f"s{step}-{i}"
        if step >= 18:  # an outlier in every feature at once
            body["samples"][5].update(length=900, kl=0.9, log_ratio_max=4.0, entropy=0.01,
                                      repetition=0.95, truncated=True, advantage=3.0)  # fmt: skip
        r = await http.post(f"/v1/runs/{run}/steps", json=body)
        assert r.status_code == 201, r.text
        flagged |= {d["sample_id"] for d in r.json()["drop"] if "sample_isolation_forest" in d["reasons"]}
        app.state.refitter.wait_idle()  # let the worker finish
    assert forest_mod._CACHE, "the forest was never fitted"
    assert request_path_fits == [], "a forest was fitted on the request path"
    samples = (await http.get(f"/v1/runs/{run}/samples", params={"step": 19})).json()
    flags = {s["sample_id"]: s["flags"] for s in samples}
    assert "sample_isolation_forest" in flags["s19-5"], flags["s19-5"]
    assert "s19-5" in flagged or "s18-5" in flagged


@pytest.mark.timeout(180)  # the old code hung here for good
def test_submitting_fits_never_waits_for_the_worker_and_every_fit_lands() -> None:
    """A job (1,024 rows, ~65 kB pickled) is more than a pipe holds. The request thread used
    to write it to the worker itself, under the lock the answer reader needs: it waited for the
    fit in progress, and with several fits in flight the three deadlocked (the process then
    never exited). Now submitting only queues the job."""
    import numpy as np

    from rlkeel.server.forest_refits import PendingFit, _Worker

    rows = np.random.default_rng(0).normal(size=(1024, 7)).tolist()
    worker = _Worker()
    try:
        futures = []
        submitter = threading.Thread(target=lambda: futures.extend(
            worker.submit(PendingFit(rows=rows, seed=seed, n_estimators=100, activate_at=0))
            for seed in range(5)
        ), daemon=True)  # fmt: skip
        submitter.start()
        submitter.join(timeout=30)
        assert not submitter.is_alive(), "submitting blocked on the worker"
        assert len(futures) == 5 and not futures[0].done(), "submit waited for a fit to finish"
        models = [f.result(timeout=120) for f in futures]
        assert all(isinstance(m, forest_mod.CompiledForest) for m in models)
        assert len({m.path_length.tobytes() for m in models}) == 5  # five seeds, five forests
    finally:
        worker.close()
