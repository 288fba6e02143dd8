"""Rollout: shapes, flags, per-sample stats against the wire schema, step metrics."""

from __future__ import annotations

import random

import pytest
import torch

from rlkeel.client.schemas import CANONICAL_STEP_METRICS, SampleStats
from rlkeel.trainer.models import CharTokenizer, build_model, sequence_log_probs
from rlkeel.trainer.rollout import (
    compute_rewards,
    generate,
    max_abs_log_ratio,
    repetition_share,
    rollout_step_metrics,
    sample_stats,
)
from rlkeel.trainer.tasks import get_task

TOK = CharTokenizer()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def batch():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model, ref = build_model("builtin-tiny", TOK), build_model("builtin-tiny", TOK)
    prompts = get_task("addition").sample(3, random.Random(0))
    return model, generate(model, TOK, prompts, group_size=4, max_new_tokens=5, seed=1,
                           ref_model=ref, step=7)  # fmt: skip


def test_shapes_masks_and_ids(batch) -> None:  # type: ignore[no-untyped-def]
    model, b = batch
    assert len(b) == 12 and b.input_ids.shape[1] == b.prompt_width + 5
    for t in (b.attention_mask, b.response_mask, b.old_log_probs, b.ref_log_probs, b.entropy):
        assert t.shape == b.input_ids.shape
    assert b.response_mask[:, :b.prompt_width].sum() == 0
    assert torch.equal(b.lengths, b.response_mask.sum(1).long())
    assert torch.equal(b.truncated, ~b.eos_seen) and bool(b.truncated.any())
    assert b.group_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert b.group_ids[5] == "s7-g1" and b.sample_ids[5] == "s7-5"
    assert (b.old_log_probs * (1 - b.response_mask)).abs().sum() == 0
    lp, _ = sequence_log_probs(model, b.input_ids, b.attention_mask, b.response_mask)
    assert torch.equal(lp, b.old_log_probs)  # ratio exactly 1 on-policy


def test_seeded_sampling_is_deterministic(batch) -> None:  # type: ignore[no-untyped-def]
    model, b = batch
    again = generate(model, TOK, b.prompts[::4], group_size=4, max_new_tokens=5, seed=1, step=7)
    assert torch.equal(again.input_ids, b.input_ids)


def _constant_policy(token_id: int):  # type: ignore[no-untyped-def]
    """A model whose greedy choice is always ``token_id`` (hidden state = ones)."""
    model = build_model("builtin-tiny", TOK, tie_embeddings=False)
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.ln_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[token_id] = 1.0
    return model


def test_truncation_flag_and_eos() -> None:
    prompts = get_task("sort").sample(2, random.Random(0))
    ends = generate(_constant_policy(TOK.eos_id), TOK, prompts, max_new_tokens=4, temperature=0)
    assert ends.eos_seen.all() and not ends.truncated.any()
    assert ends.lengths.tolist() == [1, 1] and ends.response_texts == ["", ""]
    assert ends.input_ids.shape[1] == ends.prompt_width + 1  # stopped early
    loops = generate(_constant_policy(TOK.encode("a")[0]), TOK, prompts, max_new_tokens=4,
                     temperature=0)  # fmt: skip
    assert loops.truncated.all() and loops.lengths.tolist() == [4, 4]
    assert loops.response_texts == ["aaaa", "aaaa"]
    stats = sample_stats(loops, [0.0, 0.0], [0.0, 0.0])
    assert stats[0]["repetition"] == pytest.approx(0.5) and stats[0]["kl"] is None
    assert rollout_step_metrics(loops, [0.0, 0.0], [0.0, 0.0])["truncation_rate"] == 1.0
    empty = generate(_constant_policy(TOK.eos_id), TOK, prompts, max_new_tokens=0)
    assert empty.truncated.all() and empty.lengths.tolist() == [0, 0]


def test_repetition_by_hand() -> None:
    assert repetition_share("abcabc", 3) == pytest.approx(0.25)
    assert repetition_share("aaaaa", 3) == pytest.approx(2 / 3)
    assert repetition_share("abcdef", 3) == 0.0 and repetition_share("ab", 3) == 0.0
    assert repetition_share([1, 2, 1, 2], 2) == pytest.approx(1 / 3)


def test_sample_stats_match_schema(batch) -> None:  # type: ignore[no-untyped-def]
    _, b = batch
    rewards = compute_rewards(get_task("addition"), b)
    adv = torch.randn(len(b))
    ratio = max_abs_log_ratio(b.old_log_probs + 0.1 * b.response_mask, b.old_log_probs,
                              b.response_mask)  # fmt: skip
    stats = sample_stats(b, rewards, adv, log_ratio_max=ratio)
    assert len(stats) == len(b)
    for s in stats:
        assert set(s) == set(SampleStats.model_fields)
        SampleStats(**s)
        assert s["kl"] is not None and s["kl"] >= 0 and 0 <= s["repetition"] <= 1
        assert set(s["extra"]) == {"eos_seen", "mean_log_prob"}
    assert stats[0]["log_ratio_max"] == pytest.approx(0.1, abs=1e-5)
    token_adv = adv[:, None] * b.response_mask
    assert sample_stats(b, rewards, token_adv)[3]["advantage"] == pytest.approx(float(adv[3]))


def test_step_metrics(batch) -> None:  # type: ignore[no-untyped-def]
    _, b = batch
    rewards = torch.tensor([1.0] * 4 + [0.0] * 4 + [1.0, 0.0, 0.0, 0.0])
    metrics = rollout_step_metrics(b, rewards, torch.zeros(len(b)))
    assert set(metrics) - set(CANONICAL_STEP_METRICS) == {
        "zero_std_all_correct_frac", "zero_std_all_wrong_frac", "eos_rate", "log_prob_mean"}
    assert metrics["zero_std_group_frac"] == pytest.approx(2 / 3)
    assert metrics["zero_std_all_correct_frac"] == pytest.approx(1 / 3)
    assert metrics["zero_std_all_wrong_frac"] == pytest.approx(1 / 3)
    assert metrics["positive_frac"] == pytest.approx(5 / 12)
    assert metrics["reward_max"] == 1.0 and metrics["length_max"] <= 5
    assert metrics["truncation_rate"] == pytest.approx(float(b.truncated.float().mean()))
    assert metrics["kl_max"] >= metrics["kl_mean"] >= 0


def test_select_and_to(batch) -> None:  # type: ignore[no-untyped-def]
    _, b = batch
    keep = torch.ones(len(b), dtype=torch.bool)
    keep[[1, 5]] = False
    sub = b.select(keep)
    assert len(sub) == 10 and "s7-1" not in sub.sample_ids and sub.sample_ids[1] == "s7-2"
    assert torch.equal(sub.input_ids[4], b.input_ids[6]) and len(sub.prompts) == 10
    assert sub.group_index.tolist()[:4] == [0, 0, 0, 1]
    moved = sub.to("cpu")
    assert moved.input_ids.device.type == "cpu" and moved.sample_ids == sub.sample_ids
    with pytest.raises(ValueError):
        b.select(torch.ones(3, dtype=torch.bool))
