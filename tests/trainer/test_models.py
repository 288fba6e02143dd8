"""Tokenizer, built-in transformer, HF adapter, chunked log-probs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rlkeel.trainer.models import (
    CharTokenizer,
    ValueHead,
    build_model,
    sequence_log_probs,
    token_log_probs,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tok() -> CharTokenizer:
    return CharTokenizer()


def _model(tok: CharTokenizer, seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    return build_model("builtin-tiny", tok)


def test_tokenizer_round_trip(tok: CharTokenizer) -> None:
    text = "12+345=357, rev Abc=cbA"
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == text
    assert tok.decode([*tok.encode("ab"), tok.eos_id, *tok.encode("cd")]) == "ab"
    assert tok.encode("é") == [tok.unk_id]
    assert len({tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id}) == 4


def test_unknown_model_lists_valid_names(tok: CharTokenizer) -> None:
    with pytest.raises(ValueError, match="builtin-tiny"):
        build_model("nope", tok)


def test_shapes_and_value_head(tok: CharTokenizer) -> None:
    model = _model(tok)
    ids = torch.randint(4, len(tok), (3, 7))
    hidden = model(ids, torch.ones_like(ids))
    assert hidden.shape == (3, 7, model.hidden_size)
    assert model.lm_head(hidden).shape == (3, 7, model.vocab_size) and model.vocab_size == len(tok)
    assert ValueHead(model.hidden_size)(hidden).shape == (3, 7)
    assert build_model("builtin-small", tok).hidden_size == 128


def test_causal_masking(tok: CharTokenizer) -> None:
    model = _model(tok)
    ids = torch.randint(4, len(tok), (2, 9))
    changed = ids.clone()
    changed[:, 5:] = torch.randint(4, len(tok), (2, 4))
    a, b = model(ids), model(changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_left_padding_does_not_change_hidden(tok: CharTokenizer) -> None:
    model = _model(tok)
    ids = torch.randint(4, len(tok), (1, 6))
    padded = torch.cat((torch.zeros(1, 3, dtype=torch.long), ids), dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    assert torch.allclose(model(ids)[0], model(padded, mask)[0, 3:], atol=1e-5)


def test_kv_cache_matches_full_forward(tok: CharTokenizer) -> None:
    model = _model(tok)
    ids = torch.randint(4, len(tok), (2, 10))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    h1, past = model.forward_cached(ids[:, :6], mask[:, :6], None)
    h2, _ = model.forward_cached(ids[:, 6:], mask, past)
    assert torch.allclose(torch.cat((h1, h2), 1), model(ids, mask), atol=1e-5)


@pytest.mark.parametrize("use_mask", [False, True])
def test_chunked_log_probs_equal_naive(tok: CharTokenizer, use_mask: bool) -> None:
    model = _model(tok)
    ids = torch.randint(4, len(tok), (3, 11))
    mask = (torch.rand(3, 10) > 0.3).float() if use_mask else None

    def run(chunked: bool):  # type: ignore[no-untyped-def]
        model.zero_grad()
        hidden = model(ids)[:, :-1]
        targets = ids[:, 1:]
        if chunked:
            lp, ent = token_log_probs(model, hidden, targets, mask, chunk_size=4,
                                      entropy_grad=True)  # fmt: skip
        else:
            logp = torch.log_softmax(model.lm_head(hidden).float(), -1)
            lp = logp.gather(-1, targets[..., None]).squeeze(-1)
            ent = -(logp.exp() * logp).sum(-1)
            if mask is not None:
                lp, ent = lp * mask, ent * mask
        (lp.sum() + 0.1 * ent.sum()).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        return lp.detach(), ent.detach(), grads

    lp_c, ent_c, g_c = run(True)
    lp_n, ent_n, g_n = run(False)
    assert torch.allclose(lp_c, lp_n, atol=1e-5) and torch.allclose(ent_c, ent_n, atol=1e-5)
    for a, b in zip(g_c, g_n, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_sequence_log_probs_alignment(tok: CharTokenizer) -> None:
    model = _model(tok)
    ids = torch.randint(4, len(tok), (2, 5))
    lp, _ = sequence_log_probs(model, ids, torch.ones_like(ids))
    naive = torch.log_softmax(model.lm_head(model(ids)), -1)
    assert lp[:, 0].abs().max() == 0
    assert torch.allclose(lp[:, 3], naive[:, 2].gather(-1, ids[:, 3:4]).squeeze(-1), atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                    reason="transformers is not installed (pip install transformers)")  # fmt: skip
def test_hf_adapter_tiny_llama(tok: CharTokenizer) -> None:
    from transformers import LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, vocab_size=len(tok))  # fmt: skip
    model = build_model("hf:", tok, config=config)
    ids = torch.randint(4, len(tok), (2, 8))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    hidden = model(ids, mask)
    assert hidden.shape == (2, 8, 32) and model.hidden_size == 32 and model.vocab_size == len(tok)
    h1, past = model.forward_cached(ids[:, :5], mask[:, :5], None)
    h2, _ = model.forward_cached(ids[:, 5:], mask, past)
    assert torch.allclose(torch.cat((h1, h2), 1), hidden, atol=1e-5)
    lp, _ = sequence_log_probs(model, ids, mask)
    lp.sum().backward()
    assert all(p.grad is not None for p in model.lm_head.parameters())

    from rlkeel.trainer.rollout import generate
    from rlkeel.trainer.tasks import get_task

    batch = generate(model, tok, get_task("addition").sample(2, __import__("random").Random(0)),
                     group_size=2, max_new_tokens=4, temperature=0)  # fmt: skip
    full = generate(model, tok, batch.prompts[::2], group_size=2, max_new_tokens=4,
                    temperature=0, use_cache=False)  # fmt: skip
    assert torch.equal(batch.input_ids, full.input_ids)
