"""vLLM backend on CPU: generation parity with HF, EOS handling, and real weight sync through TRL colocate.

Runs only in the separate vLLM environment (scripts/setup_vllm_env.sh); elsewhere it is skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.vllm_cpu import apply_cpu_vllm_env, trl_colocate_llm_overrides  # noqa: E402

pytest.importorskip("vllm", reason="vllm is not installed here (build it with scripts/setup_vllm_env.sh)")
apply_cpu_vllm_env()  # before any engine starts: vLLM reads its CPU settings at engine start-up

import torch  # noqa: E402

from grace_trl.prompts import PromptEncoder  # noqa: E402
from grace_trl.vllm_backend import (  # noqa: E402
    VLLMRationaleGenerator,
    cpu_weight_sync_patch,
    generate_anchor_ids_vllm,
)

pytestmark = pytest.mark.vllm

TEXTS = [
    "A man is playing a guitar on the street.",
    "The stock market fell sharply after the announcement.",
    "Photosynthesis converts light energy into chemical energy.",
]
PARITY_TOKENS = 24


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    encode = PromptEncoder(tokenizer)
    return [encode(t).input_ids for t in TEXTS]


@pytest.fixture(scope="module")
def hf_model(smollm2_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def generator(smollm2_path):
    gen = VLLMRationaleGenerator(smollm2_path, max_model_len=1024, seed=0, dtype="float32")
    yield gen
    gen.close()


def hf_greedy(model, ids, max_new_tokens, eos_token_id):
    """HF greedy completion (EOS kept, nothing after it), one prompt at a time so no padding is involved."""
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id,
                             pad_token_id=eos_token_id)
    return out[0, len(ids):].tolist()


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@pytest.mark.slow
def test_generator_matches_hf_greedy(generator, hf_model, tokenizer, prompts):
    got = generator.generate(prompts, max_new_tokens=PARITY_TOKENS, temperature=0.0, show_progress=False)
    assert len(got) == len(prompts)
    prefixes = []
    for ids, completion in zip(prompts, got):
        ref = hf_greedy(hf_model, ids, PARITY_TOKENS, tokenizer.eos_token_id)
        prefixes.append(common_prefix(completion, ref))
        # fp32 on both sides: the first tokens must agree exactly; later ones may flip on near-ties.
        assert completion[:8] == ref[:8], (tokenizer.decode(completion), tokenizer.decode(ref))
    print(f"vLLM/HF greedy agreement (common prefix of {PARITY_TOKENS}): {prefixes}")


@pytest.mark.slow
def test_generator_keeps_eos_and_stops_there(generator, tokenizer, hf_model):
    encode = PromptEncoder(tokenizer, system_prompt=None)
    ids = encode("Reply with one word: hello.").input_ids
    eos = tokenizer.eos_token_id
    [done] = generator.generate([ids], max_new_tokens=64, temperature=0.0, show_progress=False)
    assert done and done[-1] == eos, f"expected the completion to end with EOS {eos}: {done}"
    assert eos not in done[:-1]
    assert done == hf_greedy(hf_model, ids, 64, eos)
    # Cut short: exactly max_new_tokens ids and no EOS, i.e. a truncated rationale the reward can detect.
    [cut] = generator.generate([ids], max_new_tokens=len(done) - 1, temperature=0.0, show_progress=False)
    assert cut == done[:-1]


@pytest.mark.slow
def test_generator_sampling_and_input_checks(generator, prompts):
    a = generator.generate([prompts[0]] * 4, max_new_tokens=12, temperature=1.0, show_progress=False)
    assert len({tuple(x) for x in a}) > 1, "T=1 sampling of the same prompt should not give identical rationales"
    with pytest.raises(ValueError, match="prompt 1: empty"):
        generator.generate([prompts[0], []], max_new_tokens=4, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        generator.generate(prompts, max_new_tokens=4, temperature=-1.0)
    with pytest.raises(ValueError, match="prompt 0: 2000 tokens"):
        generator.generate([[1] * 2000], max_new_tokens=4, temperature=0.0)


@pytest.fixture(scope="module")
def colocate_trainer(smollm2_path, tmp_path_factory):
    """A real TRL GRPOTrainer with use_vllm=True in colocate mode, its engine built with the CPU sync fix."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    rows = [[{"role": "user", "content": t}] for t in TEXTS + ["Name a colour."]]
    dataset = Dataset.from_dict({"prompt": rows})

    def length_reward(completions, **kwargs):
        return [len(c[0]["content"]) / 100.0 for c in completions]

    args = GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("grpo-vllm")), use_vllm=True, vllm_mode="colocate",
        vllm_max_model_length=512, vllm_gpu_memory_utilization=0.3, max_steps=1, per_device_train_batch_size=2,
        num_generations=2, max_completion_length=8, learning_rate=1e-3, use_cpu=True, bf16=False,
        report_to=[], save_strategy="no", logging_steps=1, seed=0,
    )
    with cpu_weight_sync_patch() as applied, trl_colocate_llm_overrides(enforce_eager=True, dtype="float32"):
        assert applied, "tests run vLLM's CPU build, where the sync fix must be active"
        trainer = GRPOTrainer(model=smollm2_path, reward_funcs=length_reward, args=args, train_dataset=dataset)
    return trainer


@pytest.mark.slow
def test_colocate_anchor_generation_follows_policy_weights(colocate_trainer, prompts, tokenizer):
    """The sync is real: after the policy changes, the anchors vLLM writes are the new policy's greedy output."""
    trainer = colocate_trainer
    model = trainer.model
    model.eval()
    eos = tokenizer.eos_token_id
    n_tok = 12
    prompts = prompts[:2]
    rollout_settings = (trainer.vllm_generation.temperature, trainer.vllm_generation.max_completion_length)

    before = generate_anchor_ids_vllm(trainer, prompts, temperature=0.0, max_tokens=n_tok)
    assert trainer._last_loaded_step == trainer.state.global_step  # synced once for this step
    assert before == [hf_greedy(model, ids, n_tok, eos) for ids in prompts]
    # The rollouts' own sampling settings are untouched by the anchor call.
    assert (trainer.vllm_generation.temperature, trainer.vllm_generation.max_completion_length) == rollout_settings

    # Change the policy as an optimizer step would, then move to the next step.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05 * p.float().std())
    after_hf = [hf_greedy(model, ids, n_tok, eos) for ids in prompts]
    assert after_hf != before, "the perturbation is too small to change greedy output; the test would prove nothing"

    stale = generate_anchor_ids_vllm(trainer, prompts, temperature=0.0, max_tokens=n_tok)
    assert stale == before, "same global step: no sync expected, vLLM still holds the old weights"

    trainer.state.global_step += 1
    after = generate_anchor_ids_vllm(trainer, prompts, temperature=0.0, max_tokens=n_tok)
    assert after == after_hf
    assert trainer._last_loaded_step == trainer.state.global_step


@pytest.mark.slow
def test_grpo_colocate_train_step_runs(colocate_trainer):
    """One real GRPO step with vLLM rollouts; rollout log-probs from vLLM must match the trained policy's."""
    trainer = colocate_trainer
    trainer.model.train()
    out = trainer.train()
    assert trainer.state.global_step >= 1 and out.training_loss == out.training_loss  # ran, not NaN
    logs = [h for h in trainer.state.log_history if "sampling/sampling_logp_difference/max" in h]
    assert logs, trainer.state.log_history
    # vLLM's log-probs of its own samples vs the trainer's: tiny when vLLM holds the trainer's weights.
    assert float(logs[-1]["sampling/sampling_logp_difference/max"]) < 1e-2
