"""The memory planner: parameter counts against real (meta-device) models and PEFT, model states against
DeepSpeed's own estimators, hand-computed activation numbers, and the plan-memory command."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

from grace_trl.memory import (
    GIB,
    KNOWN_CONFIGS,
    Architecture,
    TrainingShape,
    activation_bytes,
    estimate,
    load_model_config,
    plan,
    recommend,
)

REPO = Path(__file__).resolve().parents[1]
# Published parameter counts of the recipe backbones (model cards / safetensors index totals).
PUBLISHED_PARAMETERS = {
    "Qwen/Qwen2.5-1.5B-Instruct": 1_543_714_304,
    "Qwen/Qwen2.5-3B-Instruct": 3_085_938_688,
    "meta-llama/Llama-3.2-3B-Instruct": 3_212_749_824,
    "Qwen/Qwen3-4B-Instruct-2507": 4_022_468_096,
}


def _arch(name: str) -> Architecture:
    return Architecture.from_config(KNOWN_CONFIGS[name], name)


def _meta_model(config_dict: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("name", sorted(KNOWN_CONFIGS))
def test_table_parameter_counts_match_transformers(name):
    model = _meta_model(KNOWN_CONFIGS[name])
    assert _arch(name).num_parameters() == model.num_parameters()
    if name in PUBLISHED_PARAMETERS:
        assert _arch(name).num_parameters() == PUBLISHED_PARAMETERS[name]


@pytest.mark.parametrize("extra", [
    dict(model_type="llama", attention_bias=True, mlp_bias=True, tie_word_embeddings=False),
    dict(model_type="qwen2", tie_word_embeddings=False),
    dict(model_type="qwen3", head_dim=24, attention_bias=True),
    dict(model_type="mistral", head_dim=16),
])
def test_formula_handles_biases_untied_heads_and_head_dim(extra):
    cfg = dict(num_hidden_layers=3, hidden_size=64, intermediate_size=96, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=True)
    cfg.update(extra)
    assert Architecture.from_config(cfg).num_parameters() == _meta_model(cfg).num_parameters()


def test_smollm2_alias_reads_the_local_checkpoint_config():
    config, source = load_model_config("smollm2-135m")
    assert source.endswith("config.json") and os.path.isfile(source)
    from safetensors import safe_open

    with safe_open(os.path.join(os.path.dirname(source), "model.safetensors"), "pt") as f:
        total = sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    assert Architecture.from_config(config).num_parameters() == total == 134_515_008


def test_lora_parameter_count_matches_peft():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(model_type="qwen2", num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=500, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    targets = ["q_proj", "v_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    arch = Architecture.from_config(cfg)
    assert arch.lora_parameters(4, targets) == trainable
    all_linear = get_peft_model(AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg)),
                                LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert arch.lora_parameters(2, "all-linear") == sum(p.numel() for p in all_linear.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="lm_head"):
        arch.lora_parameters(2, ["lm_head"])


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
@pytest.mark.parametrize("num_gpus", [1, 8, 16])
def test_model_states_agree_with_deepspeed_estimators(name, num_gpus):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    arch, shape = _arch(name), TrainingShape()
    p = arch.num_parameters()
    nodes = max(1, num_gpus // 8)
    per_node = num_gpus // nodes
    z2 = estimate(arch, shape, "zero2", num_gpus)
    _, ds_gpu = estimate_zero2_model_states_mem_needs(p, per_node, nodes, cpu_offload=False)
    assert abs(z2.model_states - ds_gpu) <= 4
    z3 = estimate(arch, shape, "zero3", num_gpus)
    _, ds_gpu, _ = estimate_zero3_model_states_mem_needs(p, arch.largest_layer_parameters(), per_node, nodes,
                                                         cpu_offload=False)
    assert abs(z3.model_states - ds_gpu) <= 4
    off = estimate(arch, shape, "zero3_offload", num_gpus, gpus_per_node=per_node)
    ds_cpu, ds_gpu, _ = estimate_zero3_model_states_mem_needs(
        p, arch.largest_layer_parameters(), per_node, nodes, cpu_offload=True, cpu_offload_params=True,
        zero_init=True, additional_buffer_factor=1.0)
    assert off.model_states == ds_gpu
    assert abs(off.cpu_offload_bytes_per_node - ds_cpu) <= 1
    ddp = estimate(arch, shape, "ddp", num_gpus)
    assert ddp.model_states == 16 * p  # fp32 weights + fp32 grads + two fp32 AdamW moments, never sharded


def test_hand_computed_activation_and_vllm_numbers():
    arch = _arch("Qwen/Qwen2.5-1.5B-Instruct")
    shape = TrainingShape(per_device_train_batch_size=8, max_completion_length=256, prompt_tokens=128,
                          activation_checkpointing=True, use_vllm=True, vllm_gpu_memory_utilization=0.3)
    # 8 × 384 tokens × (28 checkpoints × 2 B × 1536 + one recomputed layer 2 × (4·1536 + 2·1536 + 2·256 + 4·8960))
    # + 2 × fused LM-head tile (2048 tokens × 32768 vocab × 4 B)
    assert activation_bytes(arch, shape) == 3072 * (28 * 2 * 1536 + 91136) + 2 * 2048 * 32768 * 4 == 1_081_081_856
    est = estimate(arch, shape, "ddp", 8, gpu_memory_gib=80)
    assert est.vllm == int(0.3 * 80 * GIB)
    assert est.model_states == 16 * 1_543_714_304
    no_gc = TrainingShape(**{**shape.__dict__, "activation_checkpointing": False})
    assert activation_bytes(arch, no_gc) == 3072 * 28 * 91136 + 2 * 2048 * 32768 * 4
    # the GRACE embedding pass: 16 sequences × 384 tokens × (hidden in/out 2·2·1536 + one layer's transient
    # 2 × (2·1536 + 1536 + 2·256 + 3·8960)) bytes
    assert estimate(arch, shape, "zero2", 8).generation == 16 * 384 * (2 * 2 * 1536 + 2 * 32000) == 430_964_736
    # without vLLM the rollout phase holds the KV cache of the generation batch (8 × 8 accumulation steps = 64
    # sequences): 64 × 384 tokens × 28 layers × (k, v) × 256 × 2 B
    hf = TrainingShape(**{**shape.__dict__, "use_vllm": False, "gradient_accumulation_steps": 8})
    est = estimate(arch, hf, "zero2", 8)
    assert est.vllm == 0 and est.generation == 64 * 384 * 28 * 2 * 256 * 2
    z3 = estimate(arch, hf, "zero3", 8)
    assert z3.generation == est.generation + 2 * arch.num_parameters()  # ds3_gather_for_generation


def test_recipe_checkpointing_under_either_name():
    """activation_checkpointing (transformers 5.23), or the older gradient_checkpointing; on when unset."""
    assert TrainingShape.from_recipe({}).activation_checkpointing is True
    assert TrainingShape.from_recipe({"activation_checkpointing": False}).activation_checkpointing is False
    assert TrainingShape.from_recipe({"gradient_checkpointing": False}).activation_checkpointing is False
    assert TrainingShape.from_recipe({"activation_checkpointing": True, "gradient_checkpointing": True}) \
        .activation_checkpointing is True


def test_sharding_orders_and_scaling():
    arch, shape = _arch("Qwen/Qwen3-4B-Instruct-2507"), TrainingShape(use_vllm=True)
    ests = {e.strategy: e for e in plan(arch, shape, num_gpus=8, gpu_memory_gib=80)}
    assert ests["ddp"].model_states > ests["zero2"].model_states > ests["zero3"].model_states > \
        ests["zero3_offload"].model_states
    more = {e.strategy: e for e in plan(arch, shape, num_gpus=16, gpu_memory_gib=80)}
    assert more["ddp"].total == ests["ddp"].total
    assert more["zero2"].total < ests["zero2"].total and more["zero3"].total < ests["zero3"].total
    lora = TrainingShape(use_vllm=True, use_peft=True, lora_r=64, lora_target_modules="all-linear")
    assert estimate(arch, lora, "ddp", 8).total < ests["ddp"].total


def test_recommendation():
    arch = _arch("Qwen/Qwen3-4B-Instruct-2507")
    shape = TrainingShape(use_vllm=True, dtype="float32")
    choice, reason = recommend(plan(arch, shape, 8, 80))
    assert choice.strategy == "zero2" and "zero2.yaml" in reason  # DDP needs 16 B/param: 60 GiB + vLLM share
    choice, reason = recommend(plan(arch, shape, 2, 40))
    assert choice.strategy in ("zero3", "zero3_offload")
    choice, reason = recommend(plan(arch, TrainingShape(use_vllm=True, vllm_gpu_memory_utilization=0.9), 1, 24))
    assert choice is None and "nothing fits" in reason


def test_unknown_model_offline_is_a_clear_error(tmp_path):
    with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
        with pytest.raises(FileNotFoundError, match="built-in table"):
            load_model_config("nobody/not-a-model")
        config, source = load_model_config("Qwen/Qwen3-4B-Instruct-2507")
    assert source == "built-in table" and config["num_hidden_layers"] == 36
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    config, _ = load_model_config(str(tmp_path))
    with pytest.raises(ValueError, match="lacks"):
        Architecture.from_config(config)


def test_plan_memory_command(capsys):
    from grace_trl.commands.plan_memory import main

    recipe = REPO / "recipes" / "Qwen3-4B-Instruct-2507" / "grace" / "config_sup.yaml"
    with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
        assert main(["--config", str(recipe), "--num-gpus", "8", "--gpu-memory-gib", "80", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["recommended"] == "zero2" and out["parameters"] == 4_022_468_096
        assert [e["strategy"] for e in out["estimates"]] == ["ddp", "zero2", "zero3", "zero3_offload"]
        main(["--config", str(recipe), "--set", "max_completion_length=2048", "--strategy", "zero3"])
        text = capsys.readouterr().out
    assert "2048 completion" in text and "zero3" in text and "ddp" not in text.split("recommendation")[0]
    assert "recommendation: use zero3" in text
    cpu = yaml.safe_load((REPO / "recipes" / "smollm2-135m" / "sup_cpu.yaml").read_text())
    assert cpu["model_name_or_path"] == "smollm2-135m"
    assert main(["--config", str(REPO / "recipes" / "smollm2-135m" / "sup_cpu.yaml"), "--num-gpus", "1",
                 "--gpu-memory-gib", "24"]) == 0
    assert "recommendation: use ddp" in capsys.readouterr().out
