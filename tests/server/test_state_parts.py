"""The run's analysis state stored in parts: read back exactly, parts written only on change."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from sqlalchemy import select, update

from rlkeel.client.schemas import RunCreate, StepReport
from rlkeel.server import analysis, state_parts
from rlkeel.server.db.models import DetectorState
from rlkeel.server.forest_refits import fit_into_cache
from rlkeel.server.runs import service as runs
from tests.server.helpers import RUN
from tests.server.traces import troubled_run


def _cached(cache: analysis.StateCache, run_id: str) -> tuple[int, analysis.RunAnalysisState]:
    return cache._items[run_id]


def _analyse(session, run, body: dict[str, Any], cache: analysis.StateCache) -> analysis.Analysis:  # type: ignore[no-untyped-def]
    result = analysis.analyse(session, run, StepReport.model_validate(body), cache=cache)
    session.commit()
    if result.refit is not None:
        fit_into_cache(result.refit)  # as the worker would, before its activation
    return result


def _new_run(session, cache: analysis.StateCache, reports: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    """A run with `reports` analysed and committed one by one."""
    run = runs.create_run(session, RunCreate.model_validate(RUN))
    session.commit()
    for body in reports:
        _analyse(session, run, body, cache)
    return run


def _stored(session, run_id: str):  # type: ignore[no-untyped-def]
    """The run's stored (blob, memory, fit)."""
    return session.execute(
        select(DetectorState.blob, DetectorState.memory, DetectorState.fit)
        .where(DetectorState.run_id == run_id)
    ).one()  # fmt: skip


def test_state_read_back_from_the_parts_equals_the_state_written(app) -> None:  # type: ignore[no-untyped-def]
    cache = analysis.StateCache()
    pending_seen = fitted_seen = False
    with app.state.session_factory() as session:
        run = runs.create_run(session, RunCreate.model_validate(RUN))
        session.commit()
        for body in troubled_run(steps=60, samples=64):
            _analyse(session, run, body, cache)
            version, state = _cached(cache, run.id)
            pending_seen |= state.pending_fit is not None
            fitted_seen |= bool(state.detectors.forest.fit_rows)
            loaded, stored_version = analysis.load_state(session, run.id, None)
            assert stored_version == version
            assert loaded.to_dict() == state.to_dict(), f"step {body['step']} {body['phase']}"
            # The loaded state knows its parts are stored: saving it unchanged writes none.
            assert loaded.saved is not None and loaded.saved.fit == state_parts.fit_key(state)
            again = state_parts.encode(loaded, loaded.saved)
            assert again.memory is None and again.fit is None
    assert pending_seen and fitted_seen  # the trace exercises both forest parts


def test_only_changed_parts_are_encoded(app) -> None:  # type: ignore[no-untyped-def]
    cache = analysis.StateCache()
    reports = troubled_run(steps=30, samples=64)
    with app.state.session_factory() as session:
        run = _new_run(session, cache, reports[:-2])
        rollout, update_ = reports[-2], reports[-1]
        assert rollout["phase"] == "rollout" and update_["phase"] == "update"

        _, state = _cached(cache, run.id)
        assert state.saved is not None
        unchanged = state_parts.encode(state, state.saved)
        assert unchanged.memory is None and unchanged.fit is None
        assert state_parts.encode(state, None).memory is not None  # nothing saved: everything

        _analyse(session, run, rollout, cache)  # new samples: memory changes
        _, state = _cached(cache, run.id)
        blob, memory, fit = _stored(session, run.id)
        _analyse(session, run, update_, cache)  # no samples: memory and fit stay as they were
        after = _stored(session, run.id)
        assert after.memory == memory and after.fit == fit and after.blob != blob
        assert len(after.blob) < len(memory) / 4  # the part written every report is the small one


def test_a_state_stored_before_the_split_is_read_and_then_split(app) -> None:  # type: ignore[no-untyped-def]
    cache = analysis.StateCache()
    reports = troubled_run(steps=20, samples=64)
    with app.state.session_factory() as session:
        run = _new_run(session, cache, reports[:-2])
        _, state = _cached(cache, run.id)
        # As revision 0004 stored it: the whole plain-data form in `blob`, no parts.
        session.execute(
            update(DetectorState).where(DetectorState.run_id == run.id)
            .values(blob=pickle.dumps(state.to_dict(), protocol=5), memory=None, fit=None)
        )  # fmt: skip
        session.commit()
        loaded, _ = analysis.load_state(session, run.id, None)
        assert loaded.to_dict() == state.to_dict() and loaded.saved is None
        cache.drop(run.id)
        _analyse(session, run, reports[-2], cache)
        stored = _stored(session, run.id)
        assert stored.memory is not None and stored.fit is not None


def test_a_split_state_with_a_missing_part_is_refused() -> None:
    blob = pickle.dumps({"parts": state_parts.PARTS_FORMAT, "detectors": {}}, protocol=5)
    with pytest.raises(ValueError, match="a part is missing"):
        state_parts.decode(blob, None, None)
