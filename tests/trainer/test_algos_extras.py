"""Critic loss, positive emphasis, DAPO helpers and the algorithm registry."""

from __future__ import annotations

import math

import pytest
import torch

from rlkeel.trainer.algos import (
    EMPHASIS_MODES,
    LOSS_DEFAULTS,
    POLICY_LOSSES,
    algorithm_spec,
    apply_positive_emphasis,
    dynamic_sampling_keep,
    explained_variance,
    policy_loss,
    soft_overlong_penalty,
    value_loss,
)


def test_value_loss_hand_computed() -> None:
    # Token 0: V = 1, V_old = 0.5, R̂ = 0: unclipped 1, clipped V = 0.7 → 0.49; ½·max = 0.5.
    # Token 1: V = 2.4, V_old = 2, R̂ = 2.5: unclipped 0.01, clipped V = 2.2 → 0.09; ½·max = 0.045.
    # Token 2 is masked. token_mean = 0.5450/2 = 0.2725.
    values = torch.tensor([[1.0, 2.4, 50.0]], requires_grad=True)
    loss, metrics = value_loss(
        values,
        torch.tensor([[0.5, 2.0, 0.0]]),
        torch.tensor([[0.0, 2.5, 0.0]]),
        torch.tensor([[1.0, 1.0, 0.0]]),
        clip_eps=0.2,
    )
    assert abs(float(loss.detach()) - 0.2725) < 1e-6
    assert abs(float(metrics["vf_clip_frac"]) - 0.5) < 1e-6
    loss.backward()
    # Token 0 unclipped: ∂/∂V ½(V − R̂)²/2 = (1 − 0)/2; token 1's clipped branch: 0; masked: 0.
    torch.testing.assert_close(values.grad, torch.tensor([[0.5, 0.0, 0.0]]))


def test_explained_variance_hand_computed() -> None:
    # R̂ = 1, 2, 4 (var 14/9), residual 0, 0, 1 (var 2/9): 1 − 1/7.
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    ev = explained_variance(
        torch.tensor([[1.0, 2.0, 3.0, 9.0]]), torch.tensor([[1.0, 2.0, 4.0, 0.0]]), mask
    )
    assert abs(float(ev) - 6 / 7) < 1e-6
    flat = explained_variance(torch.ones(1, 3), torch.ones(1, 3), torch.ones(1, 3))
    assert math.isnan(float(flat))


def test_sample_weight_and_advantage_scale() -> None:
    adv = torch.tensor([1.0, -0.5, 0.0])
    weighted = apply_positive_emphasis("sample_weight", adv, 2.0)
    torch.testing.assert_close(weighted.sample_weights, torch.tensor([2.0, 1.0, 1.0]))
    assert weighted.token_weights is None and torch.equal(weighted.advantages, adv)
    scaled = apply_positive_emphasis("advantage_scale", adv, 2.0)
    torch.testing.assert_close(scaled.advantages, torch.tensor([2.0, -0.5, 0.0]))
    by_reward = apply_positive_emphasis(
        "sample_weight", adv, 3.0, positive=torch.tensor([False, True, False])
    )
    torch.testing.assert_close(by_reward.sample_weights, torch.tensor([1.0, 3.0, 1.0]))


def test_positive_tokens() -> None:
    # Row 0 mean 0.43 > 0: drop Â_t ≤ 0 → 1, 0, 1. Row 1 mean 1/3 > 0 → 0, 1, 0.
    # Row 2 mean −0.5 (negative sample): unchanged → 1, 1, 1.
    adv = torch.tensor([[0.5, -0.2, 1.0], [-1.0, 2.0, 0.0], [-1.0, -1.0, 0.5]])
    mask = torch.ones(3, 3)
    out = apply_positive_emphasis("positive_tokens", adv, mask=mask)
    expected = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(out.token_weights, expected)
    # Fed to the loss: ρ ≡ 1, ℓ = −Â; kept terms −0.5 − 1 − 2 + 1 + 1 − 0.5 = −2, over 9 tokens.
    lp = torch.zeros(3, 3)
    loss = policy_loss("ppo", lp, lp, out.advantages, mask, token_weights=out.token_weights).loss
    assert abs(float(loss) - (-2.0 / 9)) < 1e-6
    # Per-sequence advantages: every token of a positive sample has Â_t > 0 → a no-op.
    seq = apply_positive_emphasis(
        "positive_tokens", torch.tensor([1.0, -1.0]), mask=torch.ones(2, 2)
    )
    torch.testing.assert_close(seq.token_weights, torch.ones(2, 2))


def test_emphasis_rejects_bad_input() -> None:
    with pytest.raises(ValueError) as err:
        apply_positive_emphasis("upweight", torch.zeros(2), 2.0)
    assert all(mode in str(err.value) for mode in EMPHASIS_MODES)
    with pytest.raises(ValueError, match="factor"):
        apply_positive_emphasis("sample_weight", torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="mask"):
        apply_positive_emphasis("positive_tokens", torch.zeros(2))


def test_soft_overlong_penalty_hand_computed() -> None:
    # L_max = 10, L_c = 4: 0 up to 6; (6 − |y|)/4 in (6, 10]; −1 beyond 10.
    out = soft_overlong_penalty([5, 6, 7, 9, 10, 11], max_len=10, buffer=4)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.25, -0.75, -1.0, -1.0]))
    torch.testing.assert_close(
        soft_overlong_penalty(torch.tensor([10, 11]), max_len=10, buffer=0),
        torch.tensor([0.0, -1.0]),
    )
    with pytest.raises(ValueError, match="buffer"):
        soft_overlong_penalty([1], max_len=4, buffer=5)


def test_dynamic_sampling_keep() -> None:
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 2.0])
    keep = dynamic_sampling_keep(rewards, ["a", "a", "b", "b", "c", "c", "d"])
    assert keep.tolist() == [False, False, True, True, False, False, False]
    keep_t = dynamic_sampling_keep(rewards, torch.tensor([4, 4, 1, 1, 0, 0, 9]))
    assert torch.equal(keep, keep_t)


def test_algorithm_specs() -> None:
    assert set(POLICY_LOSSES) == {"ppo", "grpo", "dapo", "gspo", "gspo_token", "dr_grpo", "cispo"}
    estimators = {name: spec.advantage_estimator for name, spec in LOSS_DEFAULTS.items()}
    assert estimators == {
        "ppo": "gae",
        "grpo": "grpo",
        "dapo": "grpo",
        "gspo": "grpo",
        "gspo_token": "grpo",
        "dr_grpo": "dr_grpo",
        "cispo": "grpo",
    }
    grpo, gspo = algorithm_spec("grpo"), algorithm_spec("gspo")
    assert (grpo.clip_eps_low, grpo.clip_eps_high, grpo.uses_kl_in_loss) == (0.2, 0.2, True)
    assert (gspo.clip_eps_low, gspo.clip_eps_high, gspo.uses_kl_in_loss) == (3e-4, 4e-4, False)
    assert gspo.aggregation == "seq_mean_token_mean" and not gspo.token_level
    assert algorithm_spec("dapo").clip_eps_high == 0.28
    assert algorithm_spec("dr_grpo").aggregation == "seq_mean_token_sum_norm"
    assert algorithm_spec("ppo").aggregation == "token_mean" and algorithm_spec("ppo").loss == "ppo"
    with pytest.raises(ValueError, match="ppo, grpo, dapo, gspo, gspo_token, dr_grpo, cispo"):
        algorithm_spec("gspo2")
