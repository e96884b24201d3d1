"""One generation module: the trainer's anchors and the encoder's HF backend decode through one function."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from datasets import Dataset

from grace_trl.generation import HFRationaleGenerator, RationaleGenerator, eos_token_ids, split_at_eos

PACKAGE = Path(__file__).resolve().parents[1] / "grace_trl"
# generation_check asks a model chat questions with its own generation_config: not a rationale
GENERATE_ALLOWED = {"generation.py", "evaluation/generation_check.py"}


def test_model_generate_is_called_in_the_generation_module_only():
    callers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "generate"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("model", "unwrapped")
                    or isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "generate" and isinstance(node.func.value, ast.Attribute)
                    and node.func.value.attr == "model"):
                if rel not in GENERATE_ALLOWED:
                    callers.append(f"{rel}:{node.lineno}")
    assert not callers, f"model.generate called outside grace_trl/generation.py: {callers}"


def test_split_at_eos_keeps_the_eos_and_flags_truncation():
    assert split_at_eos([5, 6, 2, 2, 2], [2]) == ([5, 6, 2], False)
    assert split_at_eos([5, 6, 7], [2]) == ([5, 6, 7], True)


def test_trainer_anchors_and_encoder_backend_share_eos_ids_and_decoding(tmp_path, tiny_model_path):
    from grace_trl import GRACEConfig
    from grace_trl.trainer import GRACETrainer

    rows = Dataset.from_dict({"query": ["a cat sleeps", "the market fell"], "positive": ["cats nap", "stocks drop"],
                              "negatives": [["it rains"], ["a dog barks"]]})
    args = GRACEConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", num_generations=2,
                       per_device_train_batch_size=2, max_completion_length=8, anchor_temperature=0.0)
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=rows)
    tokenizer = trainer.grace_tokenizer
    # one EOS rule: the encoder's resolution is TRL's (the ids that end a rollout)
    assert eos_token_ids(trainer.model, tokenizer) == trainer.eos_token_ids == trainer._grace_eos_ids
    prompts = [trainer.prompt_encoder(t).input_ids for t in ["a cat sleeps", "the stock market fell sharply today"]]
    generator = HFRationaleGenerator(trainer.model, tokenizer, show_progress_bar=False)
    assert isinstance(generator, RationaleGenerator)
    assert trainer._generate_anchor_completions(trainer.model, prompts) == generator.generate(prompts, 8, 0.0)


def test_vllm_generator_implements_the_generator_interface():
    from grace_trl.vllm_backend import VLLMRationaleGenerator

    protocol = inspect.signature(RationaleGenerator.generate).parameters
    vllm = inspect.signature(VLLMRationaleGenerator.generate).parameters
    assert list(vllm)[: len(protocol)] == list(protocol)
    assert all(vllm[name].default == p.default for name, p in protocol.items())
    assert VLLMRationaleGenerator.name == "vllm" and HFRationaleGenerator.name == "hf"


def _lora_policy(tiny_model_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    # init_lora_weights=False: random B, so the adapter changes the function (a fresh one would not)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                            lora_dropout=0.0, init_lora_weights=False))


def _base_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}


def test_lora_merged_computes_the_adapters_function_and_restores_the_base_weights_bit_for_bit(tiny_model_path):
    import pytest
    import torch

    from grace_trl.generation import lora_merged

    model = _lora_policy(tiny_model_path).eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    before = _base_state(model)
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
            with lora_merged(model) as merged:  # adapters disabled: nothing to merge
                assert not merged
        with lora_merged(model) as merged:
            assert merged
            merged_logits = model(input_ids=ids).logits
            assert any(not torch.equal(v, before[k]) for k, v in _base_state(model).items())
    assert not torch.allclose(unmerged, base, atol=1e-3)  # the adapter matters ...
    torch.testing.assert_close(merged_logits, unmerged, atol=1e-5, rtol=1e-5)  # ... and merged is the same function
    after = _base_state(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, unmerged)
    # an exception inside still restores; disabled or plain models are left alone
    with pytest.raises(RuntimeError, match="boom"), lora_merged(model):
        raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in _base_state(model).items())
    with lora_merged(model, enabled=False) as merged:
        assert not merged
    with lora_merged(model.get_base_model()) as merged:
        assert not merged
    model.to(torch.bfloat16)  # merging would round the adapter's update into bf16 weights: left unmerged
    with lora_merged(model) as merged:
        assert not merged


def test_trainer_merges_lora_only_where_it_owns_the_decoding_weights(tiny_model_path):
    """Rollouts follow ``merge_lora_for_generation``, the dev evaluation always merges, and nothing merges for a
    decoder with weights of its own (vLLM, continuous batching) or for DeepSpeed/FSDP-partitioned weights."""
    from types import SimpleNamespace

    from grace_trl.trainer import GRACETrainer

    model = _lora_policy(tiny_model_path).eval()

    def merges(flag, always=False, hf_generate=True, deepspeed=False, fsdp=False):
        trainer = SimpleNamespace(args=SimpleNamespace(merge_lora_for_generation=flag),
                                  is_deepspeed_enabled=deepspeed, is_fsdp_enabled=fsdp)
        with GRACETrainer._lora_merged(trainer, model, always=always, hf_generate=hf_generate) as merged:
            return merged

    assert merges(True) and not merges(False)
    assert merges(False, always=True)
    assert not merges(True, hf_generate=False) and not merges(True, always=True, hf_generate=False)
    assert not merges(True, deepspeed=True) and not merges(True, always=True, fsdp=True)
