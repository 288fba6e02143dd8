"""Advantage estimators: hand-computed values, vectorised versus plain-Python loops, GAE
versus a slow reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from rlkeel.trainer.algos import (
    GROUP_ADVANTAGES,
    compute_advantages,
    gae,
    token_rewards_for_gae,
    whiten,
)

# Groups 7: rewards 1, 0, 0 (indices 0, 1, 3); 3: rewards 2, 4 (indices 2, 4); 9: 5 (singleton).
REWARDS = torch.tensor([1.0, 0.0, 2.0, 0.0, 4.0, 5.0])
GROUPS = torch.tensor([7, 7, 3, 7, 3, 9])


def test_grpo_hand_computed() -> None:
    # Group 7: mean 1/3, unbiased var (4/9 + 1/9 + 1/9)/2 = 1/3, std 0.577350 →
    #   (2/3)/0.577350 = 1.154701 and (−1/3)/0.577350 = −0.577350.
    # Group 3: mean 3, std √2 → ∓1/√2. Singleton: 0.
    expected = torch.tensor([1.154701, -0.577350, -0.707107, -0.577350, 0.707107, 0.0])
    torch.testing.assert_close(
        compute_advantages("grpo", REWARDS, GROUPS), expected, atol=1e-5, rtol=0
    )


def test_dr_grpo_hand_computed() -> None:
    expected = torch.tensor([2 / 3, -1 / 3, -1.0, -1 / 3, 1.0, 0.0])
    torch.testing.assert_close(compute_advantages("dr_grpo", REWARDS, GROUPS), expected)


def test_rloo_hand_computed() -> None:
    # r_i − mean of the others: 1 − 0, 0 − ½, 2 − 4, 0 − ½, 4 − 2; singleton 0.
    expected = torch.tensor([1.0, -0.5, -2.0, -0.5, 2.0, 0.0])
    torch.testing.assert_close(compute_advantages("rloo", REWARDS, GROUPS), expected)


def test_list_group_ids_and_all_equal_groups() -> None:
    ids = ["a", "a", "b", "a", "b", "c"]
    for name in GROUP_ADVANTAGES:
        torch.testing.assert_close(
            compute_advantages(name, REWARDS, ids), compute_advantages(name, REWARDS, GROUPS)
        )
    flat = compute_advantages("grpo", torch.tensor([1.0, 1.0, 1.0]), [0, 0, 0])
    torch.testing.assert_close(flat, torch.zeros(3))  # zero std: 0/(0 + ε), not NaN
    ints = compute_advantages("dr_grpo", torch.tensor([1, 0]), [0, 0])
    assert ints.dtype == torch.float32
    torch.testing.assert_close(ints, torch.tensor([0.5, -0.5]))


def _loop_reference(name: str, rewards: list[float], groups: list[int], eps: float) -> list[float]:
    out = []
    for i, r in enumerate(rewards):
        peers = [rewards[j] for j in range(len(rewards)) if groups[j] == groups[i]]
        if len(peers) == 1:
            out.append(0.0)
            continue
        mean = sum(peers) / len(peers)
        if name == "grpo":
            std = math.sqrt(sum((p - mean) ** 2 for p in peers) / (len(peers) - 1))
            out.append((r - mean) / (std + eps))
        elif name == "dr_grpo":
            out.append(r - mean)
        else:
            out.append(r - (sum(peers) - r) / (len(peers) - 1))
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name", GROUP_ADVANTAGES)
def test_vectorised_matches_the_loop(name: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    b = 37
    groups = torch.randint(0, 9, (b,), generator=g)
    # Binary rewards make all-equal groups common; a few seeds use continuous rewards.
    rewards = torch.randint(0, 2, (b,), generator=g).double()
    if seed % 2:
        rewards = torch.randn(b, generator=g, dtype=torch.float64)
    expected = torch.tensor(
        _loop_reference(name, rewards.tolist(), groups.tolist(), 1e-6), dtype=torch.float64
    )
    torch.testing.assert_close(compute_advantages(name, rewards, groups), expected)


def test_unknown_estimator_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid: grpo, dr_grpo, rloo"):
        compute_advantages("reinforce", REWARDS, GROUPS)
    with pytest.raises(ValueError, match=r"call gae\(\)"):
        compute_advantages("gae", REWARDS, GROUPS)
    with pytest.raises(ValueError, match="entries"):
        compute_advantages("grpo", REWARDS, [0, 1])


def test_gae_hand_computed() -> None:
    # γ = 0.9, λ = 0.8, valid tokens 0..1, V = 0 after the end (the pad value 9 is ignored).
    # t=1: δ = 1 + 0 − 0.2 = 0.8 → Â = 0.8.  t=0: δ = 0 + 0.9·0.2 − 0.5 = −0.32 →
    # Â = −0.32 + 0.72·0.8 = 0.256. Returns Â + V: 0.756, 1.0.
    adv, ret = gae(
        torch.tensor([[0.0, 1.0, 0.0]]),
        torch.tensor([[0.5, 0.2, 9.0]]),
        torch.tensor([[1.0, 1.0, 0.0]]),
        gamma=0.9,
        lam=0.8,
    )
    torch.testing.assert_close(adv, torch.tensor([[0.256, 0.8, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.756, 1.0, 0.0]]))


def _gae_reference(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[list[list[float]], list[list[float]]]:
    advs, rets = [], []
    for row in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[row, t] > 0]
        adv = [0.0] * rewards.shape[1]
        ret = [0.0] * rewards.shape[1]
        running = 0.0
        for k in reversed(range(len(idx))):
            t = idx[k]
            next_v = float(values[row, idx[k + 1]]) if k + 1 < len(idx) else 0.0
            delta = float(rewards[row, t]) + gamma * next_v - float(values[row, t])
            running = delta + gamma * lam * running
            adv[t] = running
            ret[t] = running + float(values[row, t])
        advs.append(adv)
        rets.append(ret)
    return advs, rets


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)])
def test_gae_matches_a_slow_reference(seed: int, gamma: float, lam: float) -> None:
    g = torch.Generator().manual_seed(seed)
    b, t = 6, 9
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).double()
    mask[0] = torch.tensor([0, 0, 1, 1, 0, 1, 1, 1, 0], dtype=torch.float64)  # left pad and a gap
    rewards = torch.randn(b, t, generator=g, dtype=torch.float64)
    values = torch.randn(b, t, generator=g, dtype=torch.float64)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    ref_adv, ref_ret = _gae_reference(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, torch.tensor(ref_adv, dtype=torch.float64))
    torch.testing.assert_close(ret, torch.tensor(ref_ret, dtype=torch.float64))


def test_token_rewards_for_gae_hand_computed() -> None:
    # β = 0.5: −β·KL on valid tokens, the sequence reward on the last valid token.
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]])
    out = token_rewards_for_gae(torch.tensor([1.0, 2.0, 3.0]), mask, kl, kl_coef=0.5)
    expected = torch.tensor([[-0.05, 0.9, 0.0], [1.8, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(out, expected)
    plain = token_rewards_for_gae(torch.tensor([1.0, 2.0, 3.0]), mask)
    torch.testing.assert_close(
        plain, torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    )


def test_whiten_hand_computed() -> None:
    # Valid 1, 2, 3, 4: mean 2.5, unbiased var 5/3, std 1.290994.
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    out = whiten(x, mask)
    expected = torch.tensor([[-1.161895, -0.387298, 0.387298], [1.161895, 0.0, 0.0]])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    kept = whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(kept[0, 0], torch.tensor(-1.161895 + 2.5), atol=1e-5, rtol=0)
