"""Shared fixtures: a tiny random Llama that speaks SmolLM2's tokenizer, and the shared data path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see grace_trl/__init__.py
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The embedded default model, prepared into the local cache (real weights)."""
    from grace_trl.aliases import resolve_model_name

    return resolve_model_name("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, smollm2_path) -> str:
    """A 2-layer random Llama (hidden 64) saved with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def penalised_model_path(tmp_path_factory, tiny_model_path):
    """The tiny model whose checkpoint generation_config sets a strong repetition penalty (Qwen2.5 sets 1.05)."""
    import json
    import shutil

    path = tmp_path_factory.mktemp("penalised") / "model"
    shutil.copytree(tiny_model_path, path)
    cfg = json.loads((path / "generation_config.json").read_text())
    cfg.update(repetition_penalty=50.0, no_repeat_ngram_size=1)
    (path / "generation_config.json").write_text(json.dumps(cfg))
    return str(path)
