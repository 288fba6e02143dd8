"""Policy losses: hand-computed values, equivalences between losses, masking and DDP
normalisers. Expected numbers are worked out by hand in the comments, not by the code."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor

from rlkeel.trainer.algos import (
    AGGREGATIONS,
    POLICY_LOSSES,
    LossOutput,
    policy_loss,
)

ln = math.log


def close(actual: Tensor, expected: float, tol: float = 1e-5) -> None:
    value = float(actual.detach())
    assert abs(value - expected) < tol, (value, expected)


def leaf(values: list[list[float]]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


def test_ppo_hand_computed_value_metrics_and_gradient() -> None:
    # ρ = 1.5, 0.5, 1.1 with Â = 1, −1, 2 and ε = 0.2:
    #   −min(1.5, 1.2) = −1.2 (clipped high); −min(−0.5, −0.8) = 0.8 (clipped low);
    #   −min(2.2, 2.2) = −2.2 → token_mean −2.6/3.
    lp = leaf([[ln(1.5), ln(0.5), ln(1.1)]])
    out = policy_loss(
        "ppo", lp, torch.zeros(1, 3), torch.tensor([[1.0, -1.0, 2.0]]), torch.ones(1, 3)
    )
    assert isinstance(out, LossOutput) and out.loss.dim() == 0
    close(out.loss, -2.6 / 3)
    close(out.metrics["clip_frac_low"], 1 / 3)
    close(out.metrics["clip_frac_high"], 1 / 3)
    close(out.metrics["clip_frac"], 2 / 3)
    close(out.metrics["ppo_kl"], -ln(1.5 * 0.5 * 1.1) / 3)  # 0.0641237
    close(out.metrics["log_ratio_abs_max"], ln(2.0))
    assert "kl" not in out.metrics
    out.loss.backward()
    # Only the unclipped token has a gradient: d(−Âρ)/dlogπ = −Âρ = −2.2, over 3 tokens.
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, 0.0, -2.2 / 3]]))


def test_ppo_dual_clip_caps_negative_advantage_loss() -> None:
    # ρ = 4, Â = −1: the clipped surrogate gives max(4, 0.8) = 4; the dual clip caps at c = 3.
    lp = leaf([[ln(4.0)]])
    args = (lp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1))
    close(policy_loss("ppo", *args).loss, 4.0)
    capped = policy_loss("ppo", *args, dual_clip_c=3.0)
    close(capped.loss, 3.0)
    close(capped.metrics["clip_frac_dual"], 1.0)
    capped.loss.backward()
    assert lp.grad is not None and float(lp.grad.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="dual_clip_c"):
        policy_loss("ppo", *args, dual_clip_c=0.5)


def test_dapo_clip_higher() -> None:
    # ρ = 1.25, Â = 1: DAPO's ε_high = 0.28 leaves it unclipped (−1.25); PPO clips to −1.2.
    args = (torch.tensor([[ln(1.25)]]), torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1))
    close(policy_loss("dapo", *args).loss, -1.25)
    close(policy_loss("ppo", *args).loss, -1.2)
    close(policy_loss("dapo", *args).metrics["clip_frac"], 0.0)


def test_grpo_seq_mean_token_mean_plus_k3() -> None:
    # ρ ≡ 1. Row 0: two tokens, Â = 1 → ℓ = −1, −1 (mean −1). Row 1: one valid token, Â = −2 →
    # ℓ = 2. seq_mean_token_mean = (−1 + 2)/2 = 0.5 (token_mean would be 0).
    # KL: row 0 token 0 has log π_ref − log π_θ = ln 2 → k3 = 2 − ln 2 − 1 = 0.306853; the rest 0.
    # Per-row means 0.1534265 and 0 → 0.0767132; β = 0.1 → 0.5 + 0.00767132.
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    ref = lp.clone()
    ref[0, 0] += ln(2.0)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -2.0])
    out = policy_loss("grpo", lp, lp, adv, mask, ref_log_probs=ref, kl_coef=0.1)
    close(out.loss, 0.5 + 0.1 * (1 - ln(2.0)) / 4)
    close(out.metrics["pg_loss"], 0.5)
    close(out.metrics["kl"], (1 - ln(2.0)) / 3)  # token mean over 3 valid tokens
    close(policy_loss("grpo", lp, lp, adv, mask).loss, 0.5)  # β = 0: no KL term
    with pytest.raises(ValueError, match="ref_log_probs"):
        policy_loss("grpo", lp, lp, adv, mask, kl_coef=0.1)


def test_dr_grpo_seq_mean_token_sum_norm() -> None:
    # ρ ≡ 1; ℓ = −1, −1 (row 0, Â = 1) and 4 (row 1, Â = −4): Σ = 2; N_seq = 2, C = T = 2 → 0.5.
    lp = torch.zeros(2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -4.0])
    close(policy_loss("dr_grpo", lp, lp, adv, mask).loss, 0.5)
    close(policy_loss("dr_grpo", lp, lp, adv, mask, norm_constant=4.0).loss, 0.25)  # 2/(2·4)


def test_gspo_sequence_ratio_hand_computed() -> None:
    # Row 0: log ρ = 0.1, 0.3 → s = e^0.2 = 1.221403, Â = 1. Row 1: log ρ = −0.2 (one token),
    # s = e^−0.2 = 0.818731, Â = −1.
    lp = leaf([[0.1, 0.3], [-0.2, 7.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    # Defaults ε = 3e-4 / 4e-4: both clipped → ℓ = −1.0004 and +0.9997; mean −0.00035.
    out = policy_loss("gspo", lp, torch.zeros(2, 2), adv, mask)
    close(out.loss, (-1.0004 + 0.9997) / 2)
    close(out.metrics["clip_frac"], 1.0)
    close(out.metrics["clip_frac_low"], 0.5)
    close(out.metrics["clip_frac_high"], 0.5)
    # Wide clip 0.3: both unclipped → (−1.221403 + 0.818731)/2 = −0.201336.
    wide = policy_loss(
        "gspo", lp, torch.zeros(2, 2), adv, mask, clip_eps_low=0.3, clip_eps_high=0.3
    )
    close(wide.loss, (-math.exp(0.2) + math.exp(-0.2)) / 2)
    wide.loss.backward()
    # ∂/∂logπ_{0,t} of −s_0/2 = −s_0·(1/2)/2; row 1: +s_1/2; the masked token: 0.
    s0, s1 = math.exp(0.2), math.exp(-0.2)
    expected = torch.tensor([[-s0 / 4, -s0 / 4], [s1 / 2, 0.0]])
    torch.testing.assert_close(lp.grad, expected)


def test_cispo_hand_computed_keeps_gradient_of_clipped_tokens() -> None:
    # Token 0: π = 0.3, ρ = 1.5 → weight clip(1.5, 0, 1.28) = 1.28, Â = 1:
    #   ℓ = −1.28·ln 0.3 = 1.541085. Token 1: π = 0.5, ρ = 0.5 → weight 0.5, Â = −1:
    #   ℓ = 0.5·ln 0.5 = −0.346574. token_mean = 0.5972555.
    lp = leaf([[ln(0.3), ln(0.5)]])
    old = torch.tensor([[ln(0.3) - ln(1.5), ln(0.5) - ln(0.5)]])
    out = policy_loss("cispo", lp, old, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2))
    close(out.loss, (-1.28 * ln(0.3) + 0.5 * ln(0.5)) / 2)
    close(out.metrics["clip_frac_high"], 0.5)
    close(out.metrics["clip_frac_low"], 0.0)
    out.loss.backward()
    # The weight is a constant: ∂ℓ/∂logπ = −w·Â → −1.28/2 and +0.5/2 (clipped token included).
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.64, 0.25]]))


def test_log_ratio_is_clamped_before_exp() -> None:
    out = policy_loss(
        "ppo", torch.tensor([[500.0]]), torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1)
    )
    assert torch.isfinite(out.loss)
    assert abs(float(out.loss) / math.exp(20.0) - 1.0) < 1e-6  # ρ = e^20, not e^500 = inf
    close(out.metrics["log_ratio_abs_max"], 20.0)


def test_sample_and_token_weights_keep_normalisers() -> None:
    # ρ ≡ 1, Â = 1 everywhere → ℓ = −1 per token; two rows of one token, token_mean.
    lp = torch.zeros(2, 1)
    adv = torch.tensor([1.0, 1.0])
    out = policy_loss("ppo", lp, lp, adv, torch.ones(2, 1), sample_weights=torch.tensor([2.0, 0.5]))
    close(out.loss, (-2.0 - 0.5) / 2)
    tok = policy_loss(
        "ppo",
        torch.zeros(1, 4),
        torch.zeros(1, 4),
        torch.tensor([1.0]),
        torch.ones(1, 4),
        token_weights=torch.tensor([[1.0, 0.0, 0.0, 1.0]]),
    )
    close(tok.loss, -2.0 / 4)


def _random_batch(seed: int, b: int = 5, t: int = 6) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).float()
    old = -torch.rand(b, t, generator=g) * 3
    lp = old + 0.15 * torch.randn(b, t, generator=g)
    return {
        "log_probs": lp,
        "old_log_probs": old,
        "ref_log_probs": old + 0.1 * torch.randn(b, t, generator=g),
        "seq_adv": torch.randn(b, generator=g),
        "tok_adv": torch.randn(b, t, generator=g),
        "mask": mask,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [(3e-4, 4e-4), (0.1, 0.15), (0.5, 0.5)])
def test_gspo_token_equals_gspo_in_value_and_gradient(seed: int, eps: tuple[float, float]) -> None:
    batch = _random_batch(seed)
    grads = []
    values = []
    for name in ("gspo", "gspo_token"):
        lp = batch["log_probs"].clone().requires_grad_(True)
        out = policy_loss(
            name,
            lp,
            batch["old_log_probs"],
            batch["seq_adv"],
            batch["mask"],
            clip_eps_low=eps[0],
            clip_eps_high=eps[1],
        )
        out.loss.backward()
        values.append(out.loss.detach())
        grads.append(lp.grad)
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(grads[0], grads[1])
    assert float(grads[0].abs().sum()) > 0 or eps[0] < 1e-3  # wide clips do move the policy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_token_gspo_equals_ppo_with_the_same_clip(seed: int) -> None:
    batch = _random_batch(seed, t=1)
    eps = {"clip_eps_low": 0.1, "clip_eps_high": 0.12}
    grads = []
    values = []
    for name in ("gspo", "ppo"):
        lp = batch["log_probs"].clone().requires_grad_(True)
        out = policy_loss(name, lp, batch["old_log_probs"], batch["seq_adv"], batch["mask"], **eps)
        out.loss.backward()
        values.append(out.loss.detach())
        grads.append(lp.grad)
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("seed", [0, 1])
def test_dapo_with_equal_clips_equals_ppo(seed: int) -> None:
    batch = _random_batch(seed)
    args = (batch["log_probs"], batch["old_log_probs"], batch["tok_adv"], batch["mask"])
    dapo = policy_loss("dapo", *args, clip_eps_high=0.2)
    ppo = policy_loss("ppo", *args)
    torch.testing.assert_close(dapo.loss, ppo.loss)
    torch.testing.assert_close(dapo.metrics["clip_frac"], ppo.metrics["clip_frac"])


@pytest.mark.parametrize("name", POLICY_LOSSES)
def test_masked_tokens_get_exactly_zero_gradient(name: str) -> None:
    batch = _random_batch(3)
    mask = batch["mask"]
    # Garbage off the mask (−inf log-probs, huge advantages) must not leak anywhere.
    lp_data = batch["log_probs"].masked_fill(mask == 0, -math.inf)
    old = batch["old_log_probs"].masked_fill(mask == 0, 1e6)
    adv = batch["tok_adv"].masked_fill(mask == 0, 1e9)
    lp = lp_data.clone().requires_grad_(True)
    out = policy_loss(
        name,
        lp,
        old,
        adv,
        mask,
        ref_log_probs=batch["ref_log_probs"],
        kl_coef=0.05,
        clip_eps_low=0.2,
        clip_eps_high=0.2,
    )
    out.loss.backward()
    assert lp.grad is not None
    assert torch.isfinite(out.loss)
    assert torch.equal(lp.grad[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert float(lp.grad[mask == 1].abs().sum()) > 0
    assert all(torch.isfinite(v) for v in out.metrics.values())


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("name", POLICY_LOSSES)
def test_zero_mask_row_leaves_the_normalisers(name: str, aggregation: str) -> None:
    batch = _random_batch(4, b=4)
    kwargs = {"kl_coef": 0.1, "aggregation": aggregation, "clip_eps_low": 0.1, "clip_eps_high": 0.1}

    def run(rows: slice | list[int], mask: Tensor) -> LossOutput:
        return policy_loss(
            name,
            batch["log_probs"][rows],
            batch["old_log_probs"][rows],
            batch["tok_adv"][rows],
            mask,
            ref_log_probs=batch["ref_log_probs"][rows],
            **kwargs,
        )

    dropped = batch["mask"].clone()
    dropped[2] = 0.0
    with_row = run(slice(None), dropped)
    without = run([0, 1, 3], batch["mask"][[0, 1, 3]])
    torch.testing.assert_close(with_row.loss, without.loss)
    for key in ("clip_frac", "ppo_kl", "kl"):
        torch.testing.assert_close(with_row.metrics[key], without.metrics[key])


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("name", ["grpo", "dapo", "gspo"])
def test_global_counts_give_the_ddp_equivalent_normaliser(name: str, aggregation: str) -> None:
    batch = _random_batch(5, b=6)
    m = batch["mask"]
    global_tokens = m.sum()
    global_seqs = (m.sum(1) > 0).float().sum()

    def loss(rows: slice, **counts: Tensor) -> Tensor:
        return policy_loss(
            name,
            batch["log_probs"][rows],
            batch["old_log_probs"][rows],
            batch["seq_adv"][rows],
            m[rows],
            aggregation=aggregation,
            norm_constant=6.0,
            **counts,
        ).loss

    full = loss(slice(None))
    ranks = [slice(0, 2), slice(2, 6)]  # unequal shards, as after dropping samples
    shared = sum(
        loss(r, global_token_count=global_tokens, global_seq_count=global_seqs) for r in ranks
    )
    torch.testing.assert_close(shared, full)
    local = sum(loss(r) for r in ranks) / 2
    assert not torch.allclose(local, full)  # the local normalisers would be wrong


def test_per_sequence_advantages_broadcast() -> None:
    batch = _random_batch(6)
    args = (batch["log_probs"], batch["old_log_probs"])
    expanded = batch["seq_adv"].unsqueeze(1).expand_as(batch["mask"])
    for name in POLICY_LOSSES:
        a = policy_loss(name, *args, batch["seq_adv"], batch["mask"]).loss
        b = policy_loss(name, *args, expanded, batch["mask"]).loss
        torch.testing.assert_close(a, b)


def test_unknown_names_list_the_valid_ones() -> None:
    args = (torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1))
    with pytest.raises(ValueError) as err:
        policy_loss("dpo", *args)
    assert all(name in str(err.value) for name in POLICY_LOSSES)
    with pytest.raises(ValueError, match="token_mean, seq_mean_token_mean"):
        policy_loss("ppo", *args, aggregation="sum")
    with pytest.raises(ValueError, match="k1, k2, k3"):
        policy_loss("ppo", *args, ref_log_probs=torch.zeros(1, 1), kl_estimator="k4")


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        policy_loss("ppo", torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        policy_loss("ppo", torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2), torch.ones(2, 3))


def test_losses_never_read_back_to_the_host() -> None:
    import inspect

    from rlkeel.trainer.algos import aggregation, critic, kl, losses

    for module in (losses, aggregation, kl, critic):
        source = inspect.getsource(module)
        # A call on an expression (``x.item()``), not the word in a docstring.
        assert not re.search(r"[\w)\]]\.(item|tolist|cpu)\(", source), module.__name__
