"""The column-wise fast path of the sample rows gives exactly the sample-by-sample rows."""

from __future__ import annotations

import math

from rlkeel.client.schemas import SampleStats
from rlkeel.server.steps import store
from tests.server.helpers import sample


def _slow(run_id, step, samples):  # type: ignore[no-untyped-def]
    """`_sample_rows` with the fast path refused (a sample with an extra forces the slow path,
    which is then taken off the result)."""
    marker = SampleStats.model_validate(sample(10_000, sample_id="marker", extra={"k": 1}))
    return store._sample_rows(run_id, step, [*samples, marker])[:-1]


def test_fast_rows_equal_the_sample_by_sample_rows() -> None:
    samples = [SampleStats.model_validate(sample(i, kl=None if i % 5 == 0 else 0.01 * i,
                                                 repetition=None if i % 3 else 0.2))
               for i in range(40)]  # fmt: skip
    fast = store._plain_sample_rows("r", 5, samples)
    assert fast is not None
    assert fast == _slow("r", 5, samples)
    assert fast == store._sample_rows("r", 5, samples)


def test_reports_with_nonfinite_numbers_or_extras_take_the_sample_by_sample_path() -> None:
    plain = [SampleStats.model_validate(sample(i)) for i in range(4)]
    nan = [*plain, SampleStats.model_validate(sample(9, entropy=math.inf))]
    extra = [*plain, SampleStats.model_validate(sample(9, extra={"note": "x"}))]
    assert store._plain_sample_rows("r", 0, nan) is None
    assert store._plain_sample_rows("r", 0, extra) is None
    rows = store._sample_rows("r", 0, nan)
    assert rows[-1][13] == {"entropy": "Infinity"}


def test_finite_numbers_whose_sum_overflows_are_stored_as_they_are() -> None:
    """The fast path's finiteness check is one sum per column: a sum that overflows sends the
    report down the exact sample-by-sample path, which stores the (finite) numbers as they are."""
    big = [SampleStats.model_validate(sample(i, advantage=1.5e308)) for i in range(3)]
    assert store._plain_sample_rows("r", 0, big) is None
    rows = store._sample_rows("r", 0, big)
    assert [r[5] for r in rows] == [1.5e308] * 3 and all(r[13] is None for r in rows)
