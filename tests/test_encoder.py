"""GRACEEncoder: determinism, pooling identical to the trainer's, cache use, checkpoint settings."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from grace_trl.encoder import GRACEEncoder
from grace_trl.generation import HFRationaleGenerator, RationaleGenerator, split_at_eos
from grace_trl.pooling import embed_token_sequences
from grace_trl.prompts import PromptEncoder
from grace_trl.settings import GRACESettings

TEXTS = ["A man is playing a guitar.", "The stock market fell sharply on Monday.", "Cats sleep a lot.",
         "A man is playing a guitar."]


@pytest.fixture(scope="module")
def encoder(tiny_model_path):
    return GRACEEncoder.from_pretrained(tiny_model_path, device="cpu")


def test_split_at_eos():
    assert split_at_eos([5, 6, 2, 2, 2], {2}) == ([5, 6, 2], False)
    assert split_at_eos([5, 6, 7], {2}) == ([5, 6, 7], True)
    assert split_at_eos([2], {2}) == ([2], False)


def test_greedy_encode_is_deterministic(encoder, tiny_model_path):
    a, ra = encoder.encode(TEXTS, max_new_tokens=6, return_rationales=True, show_progress_bar=False)
    b, rb = encoder.encode(TEXTS, max_new_tokens=6, return_rationales=True, show_progress_bar=False)
    fresh = GRACEEncoder.from_pretrained(tiny_model_path, device="cpu")
    c = fresh.encode(TEXTS, max_new_tokens=6, batch_size=3, show_progress_bar=False)
    assert a.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, atol=1e-5)
    assert [r.token_ids for r in ra] == [r.token_ids for r in rb]
    np.testing.assert_allclose(a[0], a[3], atol=1e-6)  # duplicate texts get the same vector


# SmolLM2's template plus a switch read from chat_template_kwargs, like Qwen3's enable_thinking.
THINKING_SWITCH = "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"


@pytest.fixture(scope="module")
def switch_model_path(tmp_path_factory, tiny_model_path):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("switch") / "model"
    shutil.copytree(tiny_model_path, path)
    tok = AutoTokenizer.from_pretrained(path)
    marker = "'<|im_start|>assistant\n' }}"
    assert marker in tok.chat_template
    tok.chat_template = tok.chat_template.replace(marker, marker + THINKING_SWITCH)
    tok.save_pretrained(path)
    return str(path)


def test_encoder_vectors_equal_the_trainers_rollout_embeddings(tmp_path, switch_model_path):
    """GRACEEncoder.encode on a saved checkpoint gives the vectors the reward saw for the same text and rationale."""
    from datasets import Dataset

    from grace_trl import GRACEConfig
    from grace_trl.trainer import GRACETrainer

    data = Dataset.from_dict({"query": ["q one", "q two"], "positive": ["A man plays a guitar.", "Cats sleep a lot."],
                              "negatives": [["n one"], ["n two"]]})
    args = GRACEConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", seed=0,
                       num_generations=2, per_device_train_batch_size=4, max_completion_length=6,
                       instruction="Represent this text:", chat_template_kwargs={"enable_thinking": False})
    trainer = GRACETrainer(switch_model_path, args=args, train_dataset=data)
    trainer.save_model(str(tmp_path / "ckpt"))
    enc = GRACEEncoder.from_pretrained(str(tmp_path / "ckpt"), device="cpu")
    vecs, rats = enc.encode(data["positive"], return_rationales=True, show_progress_bar=False)
    # the trainer embeds those same rationales as rollouts of the dataset's own prompts (groups of G = 2)
    rows = [row for row in trainer.train_dataset for _ in range(2)]
    trainer.model.train()
    batch = trainer.build_rollout_embeddings(rows, [r["prompt"] for r in rows],
                                             [r.token_ids for r in rats for _ in range(2)])
    assert "<think>" in enc.tokenizer.decode(enc.prompt_encoder()(data["positive"][0]).input_ids)
    np.testing.assert_allclose(batch.policy[::2].numpy(), vecs, atol=1e-5)


def test_encoder_ignores_the_checkpoint_generation_config(penalised_model_path, tiny_model_path):
    """Greedy rationales are the plain greedy continuation, whatever generation_config.json asks for."""
    enc = GRACEEncoder.from_pretrained(penalised_model_path, device="cpu")
    plain = GRACEEncoder.from_pretrained(tiny_model_path, device="cpu")  # same weights, neutral config
    a, ra = enc.encode(TEXTS[:3], max_new_tokens=8, return_rationales=True, show_progress_bar=False)
    b, rb = plain.encode(TEXTS[:3], max_new_tokens=8, return_rationales=True, show_progress_bar=False)
    p = enc.prompt_encoder()(TEXTS[0]).input_ids
    penalised = enc.model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False)[0, len(p):].tolist()
    assert penalised[: len(rb[0].token_ids)] != rb[0].token_ids, "the penalty must change greedy decoding"
    assert [r.token_ids for r in ra] == [r.token_ids for r in rb]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_without_rationale_pools_the_prompt_content(encoder):
    vecs = encoder.encode(TEXTS[:2], use_rationale=False, show_progress_bar=False)
    pe = PromptEncoder(encoder.tokenizer, encoder.settings.system_prompt)
    prompts = [pe(t) for t in TEXTS[:2]]
    ref = embed_token_sequences(encoder.model, [p.input_ids for p in prompts],
                                [(p.content_start, len(p.input_ids)) for p in prompts], encoder.tokenizer.pad_token_id)
    np.testing.assert_allclose(vecs, ref.numpy(), atol=1e-5)
    with_rat = encoder.encode(TEXTS[:2], max_new_tokens=6, show_progress_bar=False)
    assert not np.allclose(vecs, with_rat, atol=1e-3)


def test_single_string_and_tensor_output(encoder):
    v = encoder.encode("hello there", max_new_tokens=3, show_progress_bar=False)
    assert v.shape == (64,)
    t = encoder.encode(["hello there"], max_new_tokens=3, convert_to_numpy=False, show_progress_bar=False)
    assert isinstance(t, torch.Tensor) and t.shape == (1, 64)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        encoder.encode(["ok", 3], show_progress_bar=False)


def test_truncated_rationale_is_flagged(encoder):
    _, rats = encoder.encode(TEXTS[:2], max_new_tokens=2, return_rationales=True, show_progress_bar=False)
    for r in rats:
        eos_seen = encoder.tokenizer.eos_token_id in r.token_ids
        assert r.truncated == (not eos_seen)
        assert len(r.token_ids) <= 2


def test_cache_skips_generation_and_recovers(tiny_model_path, tmp_path):
    enc = GRACEEncoder.from_pretrained(tiny_model_path, device="cpu", cache_dir=tmp_path / "c")
    calls = []
    original = enc.generator.generate

    def counting(prompts, max_new_tokens, temperature=0.0):
        calls.append(len(prompts))
        return original(prompts, max_new_tokens, temperature)

    enc.generator.generate = counting
    a = enc.encode(TEXTS, max_new_tokens=5, show_progress_bar=False)
    assert calls == [3]  # 4 texts, one duplicate
    b, rats = enc.encode(TEXTS, max_new_tokens=5, return_rationales=True, show_progress_bar=False)
    assert calls == [3] and all(r.cached for r in rats)
    np.testing.assert_array_equal(a, b)
    five_token_entries = sorted((tmp_path / "c").rglob("*.json"))
    assert len(five_token_entries) == 3
    # another generation setting is another key
    enc.encode(TEXTS[:1], max_new_tokens=4, show_progress_bar=False)
    assert calls == [3, 1]
    assert len(sorted((tmp_path / "c").rglob("*.json"))) == 4
    # damage one entry of the 5-token run (half-written file): it is regenerated, embeddings unchanged
    victim = five_token_entries[0]
    victim.write_bytes(victim.read_bytes()[:10])
    c = enc.encode(TEXTS, max_new_tokens=5, show_progress_bar=False)
    assert calls == [3, 1, 1] and enc.cache.recovered == 1
    np.testing.assert_allclose(a, c, atol=1e-6)


def test_one_progress_bar_over_all_chunks(tiny_model_path, tmp_path, capsys):
    enc = GRACEEncoder.from_pretrained(tiny_model_path, device="cpu", cache_dir=tmp_path / "c")
    enc.cache_flush_every = 2
    enc.encode([f"sentence number {i} about dogs" for i in range(5)], max_new_tokens=3, batch_size=2)
    err = capsys.readouterr().err
    # 3 chunks (2 + 2 + 1) report into one bar counting texts, not a fresh 1-batch bar per chunk
    assert "rationales: 100%" in err and "5/5" in err
    assert "1/1" not in err and "batch" not in err


def test_progress_reports_a_first_generation_batch_then_the_usual_chunks(tiny_model_path, tmp_path):
    enc = GRACEEncoder.from_pretrained(tiny_model_path, device="cpu", cache_dir=tmp_path / "c")
    texts = [f"sentence number {i} about cats" for i in range(7)]
    expected = enc.encode(texts[:2], max_new_tokens=4, show_progress_bar=False)  # 2 of the 7 are cached now
    reports, calls = [], []
    original = enc.generator.generate

    def counting(prompts, max_new_tokens, temperature=0.0):
        calls.append(len(prompts))
        return original(prompts, max_new_tokens, temperature)

    enc.generator.generate = counting
    enc.on_rationales_generated = lambda *report: reports.append(report)
    enc.cache_flush_every = 3
    vectors = enc.encode(texts + texts[:1], max_new_tokens=4, batch_size=2, show_progress_bar=False)
    # 8 texts, one repeated, 2 cached: 5 to generate, the first 2 (one batch) timed on their own, then chunks of 3
    assert calls == [2, 3]
    assert [r[:3] for r in reports] == [(2, 5, 8), (5, 5, 8)] and 0 < reports[0][3] <= reports[1][3]
    np.testing.assert_allclose(vectors[:2], expected, atol=1e-6)


def test_reads_grace_config_from_checkpoint(tiny_model_path, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_path, ckpt)
    GRACESettings(system_prompt=None, instruction="Represent this sentence:", pooling="last",
                  max_new_tokens=3).save(str(ckpt))
    enc = GRACEEncoder.from_pretrained(str(ckpt), device="cpu")
    assert enc.settings.pooling == "last" and enc.settings.max_new_tokens == 3
    v, rats = enc.encode(TEXTS[:2], return_rationales=True, show_progress_bar=False)
    assert all(len(r.token_ids) <= 3 for r in rats)
    pe = PromptEncoder(enc.tokenizer, None, "Represent this sentence:")
    seqs = [pe(t).input_ids + r.token_ids for t, r in zip(TEXTS[:2], rats)]
    assert "Represent this sentence:" in enc.tokenizer.decode(seqs[0])
    ref = embed_token_sequences(enc.model, seqs, [(len(s) - 1, len(s)) for s in seqs], enc.tokenizer.pad_token_id)
    np.testing.assert_allclose(v, ref.numpy(), atol=1e-5)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_path, bad)
    (bad / "grace_config.json").write_text(json.dumps({"pooling": "max"}))
    with pytest.raises(ValueError, match="pooling"):
        GRACEEncoder.from_pretrained(str(bad), device="cpu")


def test_backends(tiny_model_path, encoder):
    assert isinstance(encoder.generator, HFRationaleGenerator)
    assert isinstance(encoder.generator, RationaleGenerator)
    with pytest.raises(ValueError, match="backend"):
        GRACEEncoder.from_pretrained(tiny_model_path, device="cpu", backend="onnx")
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError, match="vllm"):
            GRACEEncoder.from_pretrained(tiny_model_path, device="cpu", backend="vllm")


def test_seeded_sampling_is_reproducible(encoder):
    a = encoder.encode(TEXTS[:2], max_new_tokens=6, temperature=1.0, seed=3, show_progress_bar=False)
    b = encoder.encode(TEXTS[:2], max_new_tokens=6, temperature=1.0, seed=3, show_progress_bar=False)
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_real_smollm2_encodes_with_rationales():
    enc = GRACEEncoder.from_pretrained("smollm2-135m", device="cpu")
    texts = ["A man is playing a guitar.", "A person plays an instrument.", "The stock market crashed."]
    vecs, rats = enc.encode(texts, max_new_tokens=16, return_rationales=True, show_progress_bar=False)
    assert vecs.shape == (3, 576)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    for r in rats:
        assert 0 < len(r.token_ids) <= 16 and r.text.strip()
        assert r.truncated == (enc.tokenizer.eos_token_id not in r.token_ids)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2]  # paraphrase closer than an unrelated sentence


def test_interrupted_generation_keeps_finished_chunks(tiny_model_path, tmp_path):
    enc = GRACEEncoder.from_pretrained(tiny_model_path, device="cpu", cache_dir=tmp_path / "c")
    enc.cache_flush_every = 1
    original = enc.generator.generate
    calls = []

    def failing_second_time(prompts, max_new_tokens, temperature=0.0):
        calls.append(len(prompts))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(prompts, max_new_tokens, temperature)

    enc.generator.generate = failing_second_time
    with pytest.raises(KeyboardInterrupt):
        enc.encode(TEXTS[:3], max_new_tokens=4, show_progress_bar=False)
    assert len(enc.cache) == 1  # the chunk finished before the interruption is kept, nothing half-written
    assert not list((tmp_path / "c").rglob("*.tmp"))
    enc.generator.generate = original
    a = enc.encode(TEXTS[:3], max_new_tokens=4, show_progress_bar=False)
    assert enc.cache.hits >= 1 and len(enc.cache) == 3
    fresh = GRACEEncoder.from_pretrained(tiny_model_path, device="cpu")
    np.testing.assert_allclose(a, fresh.encode(TEXTS[:3], max_new_tokens=4, show_progress_bar=False), atol=1e-5)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_backend_encodes_like_the_hf_path(penalised_model_path):
    """Both backends write the same greedy rationale and vectors, whatever generation_config.json says."""
    pytest.importorskip("vllm")
    texts = ["A man is playing a guitar.", "The stock market crashed."]
    hf = GRACEEncoder.from_pretrained(penalised_model_path, device="cpu")
    vl = GRACEEncoder.from_pretrained(penalised_model_path, device="cpu", backend="vllm",
                                      backend_kwargs={"dtype": "float32", "max_model_len": 512})
    a, ra = hf.encode(texts, max_new_tokens=8, return_rationales=True, show_progress_bar=False)
    b, rb = vl.encode(texts, max_new_tokens=8, return_rationales=True, show_progress_bar=False)
    assert [r.token_ids for r in rb] == [r.token_ids for r in ra]
    assert [r.truncated for r in rb] == [r.truncated for r in ra]
    np.testing.assert_allclose(b, a, atol=1e-5)
