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
