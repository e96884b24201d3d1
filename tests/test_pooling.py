import pytest
import torch

from grace_trl.pooling import embed_token_sequences, masked_mean, pool_span, span_mask


def test_pool_spans():
    assert pool_span(10, 4, 5, "mean") == (4, 15)
    assert pool_span(10, 4, 5, "rationale") == (10, 15)
    assert pool_span(10, 4, 0, "rationale") == (4, 10)
    assert pool_span(10, 4, 5, "last") == (14, 15)
    with pytest.raises(ValueError, match="pooling"):
        pool_span(10, 4, 5, "cls")


def test_masked_mean_excludes_masked_positions():
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [100.0, 100.0]]])
    mask = span_mask([(0, 2)], 3)
    assert mask.tolist() == [[1.0, 1.0, 0.0]]
    out = masked_mean(hidden, mask, normalize=False)
    assert out.tolist() == [[0.5, 0.5]]
    assert torch.allclose(masked_mean(hidden, mask).norm(dim=-1), torch.ones(1))


def test_system_prompt_and_padding_do_not_change_the_embedding(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grace_trl.prompts import PromptEncoder

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    enc = PromptEncoder(tok)("Two dogs play in the snow .")
    rationale = tok("<think>dogs, snow</think> Dogs playing.", add_special_tokens=False)["input_ids"]
    rationale = rationale + [tok.eos_token_id]
    seq = enc.input_ids + rationale
    span = pool_span(len(enc.input_ids), enc.content_start, len(rationale), "mean")
    alone = embed_token_sequences(model, [seq], [span], tok.pad_token_id)
    # batched with a much longer sequence -> right padding added to ours: same vector
    longer = seq + rationale * 5
    batched = embed_token_sequences(model, [seq, longer], [span, (span[0], len(longer))], tok.pad_token_id)
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
    # reference: manual forward, average exactly over the span
    with torch.no_grad():
        h = model.model(input_ids=torch.tensor([seq])).last_hidden_state[0]
    ref = torch.nn.functional.normalize(h[span[0]:span[1]].mean(0), dim=-1)
    assert torch.allclose(alone[0], ref, atol=1e-5)
    # including the system prompt would give a different vector
    with_system = torch.nn.functional.normalize(h[: span[1]].mean(0), dim=-1)
    assert not torch.allclose(alone[0], with_system, atol=1e-3)
    model.train()
    embed_token_sequences(model, [seq], [span], tok.pad_token_id)
    assert model.training, "embedding must restore train mode"


def test_shared_prefix_is_computed_once_and_gives_the_same_vectors(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grace_trl.pooling import get_backbone, shared_prefix_length
    from grace_trl.prompts import PromptEncoder

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    pe = PromptEncoder(tok)
    texts = ["A man plays a guitar on stage .", "Kids .", "The committee postponed the vote until next week ."]
    seqs, spans = [], []
    for k, text in enumerate(texts):
        enc = pe(text)
        rationale = tok(f"<think>{'x ' * (3 * k)}</think> short.", add_special_tokens=False)["input_ids"]
        seqs.append(enc.input_ids + rationale)
        spans.append(pool_span(len(enc.input_ids), enc.content_start, len(rationale), "mean"))
    prefix = shared_prefix_length(seqs, spans)
    assert prefix == min(s for s, _ in spans)  # the whole system turn + user header, never into the content
    assert all(seq[:prefix] == seqs[0][:prefix] for seq in seqs)

    seen = []
    hook = get_backbone(model).register_forward_hook(lambda m, a, kw, out: seen.append(kw["input_ids"].numel()),
                                                     with_kwargs=True)
    try:
        shared = embed_token_sequences(model, seqs, spans, tok.pad_token_id, batch_size=2)
        n_shared = sum(seen)
        seen.clear()
        plain = embed_token_sequences(model, seqs, spans, tok.pad_token_id, batch_size=2, share_prefix=False)
        n_plain = sum(seen)
    finally:
        hook.remove()
    assert torch.allclose(shared, plain, atol=1e-5)
    # 2 batches: each runs the prefix once (1 row) instead of once per row
    assert n_plain - n_shared == prefix * (len(seqs) - 2)
    # a pooling span that starts inside the common prefix stops the sharing there
    assert shared_prefix_length(seqs, [(3, e) for _, e in spans]) == 3


def test_embed_rejects_spans_outside_the_sequence(tiny_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with pytest.raises(ValueError, match="sequence 1: pooling span"):
        embed_token_sequences(model, [[1, 2, 3], [1, 2]], [(0, 3), (1, 5)], 0)
