"""Aggregation modes and KL estimators, against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlkeel.trainer.algos import AGGREGATIONS, KL_ESTIMATORS, aggregate, kl_estimate

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # row 2 dropped


@pytest.mark.parametrize(
    ("mode", "kwargs", "expected"),
    [
        ("token_mean", {}, 7 / 3),  # (1 + 2 + 4)/3
        ("seq_mean_token_mean", {}, 2.75),  # (1.5 + 4)/2: the dropped row is not a sequence
        ("seq_mean_token_sum_norm", {}, 7 / 6),  # 7/(2 seqs · T = 3)
        ("seq_mean_token_sum_norm", {"norm_constant": 7.0}, 0.5),  # 7/(2 · 7)
        ("token_mean", {"global_token_count": 7}, 1.0),
        ("token_mean", {"global_token_count": torch.tensor(14.0)}, 0.5),
        ("seq_mean_token_mean", {"global_seq_count": 4}, 1.375),  # 5.5/4
        ("seq_mean_token_sum_norm", {"global_seq_count": torch.tensor(7.0)}, 1 / 3),  # 7/(7·3)
    ],
)
def test_aggregate_hand_computed(mode: str, kwargs: dict[str, object], expected: float) -> None:
    out = aggregate(LOSS, MASK, mode, **kwargs)  # type: ignore[arg-type]
    assert out.dim() == 0
    assert abs(float(out) - expected) < 1e-6


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_empty_batch_is_zero_not_nan(mode: str) -> None:
    assert float(aggregate(LOSS, torch.zeros(3, 3), mode)) == 0.0


def test_masked_non_finite_values_do_not_leak() -> None:
    loss = LOSS.clone()
    loss[2] = math.nan
    loss[0, 2] = math.inf
    for mode in AGGREGATIONS:
        torch.testing.assert_close(aggregate(loss, MASK, mode), aggregate(LOSS, MASK, mode))


def test_unknown_aggregation_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match="token_mean, seq_mean_token_mean, seq_mean_token_sum_norm"
    ):
        aggregate(LOSS, MASK, "sum")
    with pytest.raises(ValueError, match="norm_constant"):
        aggregate(LOSS, MASK, "seq_mean_token_sum_norm", norm_constant=0.0)


def test_kl_estimators_hand_computed() -> None:
    # log π_θ = ln ½, log π_ref = ln ¼: d = log π_ref − log π_θ = −ln 2.
    # k1 = ln 2 = 0.693147; k2 = ½ (ln 2)² = 0.240227; k3 = ½ + ln 2 − 1 = 0.193147.
    lp = torch.tensor([[math.log(0.5), -1.0]])
    ref = torch.tensor([[math.log(0.25), -1.0]])  # second token: equal → 0 for all
    expected = {"k1": 0.693147, "k2": 0.240227, "k3": 0.193147}
    for name in KL_ESTIMATORS:
        out = kl_estimate(lp, ref, name)
        assert out.shape == (1, 2)
        torch.testing.assert_close(out, torch.tensor([[expected[name], 0.0]]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(lp, ref, "k4")


def test_k3_is_non_negative_and_finite_for_extreme_gaps() -> None:
    lp = torch.tensor([[-200.0, 0.0, -3.0]])
    ref = torch.tensor([[0.0, -200.0, -2.0]])
    out = kl_estimate(lp, ref, "k3")
    assert torch.isfinite(out).all() and (out >= 0).all()
