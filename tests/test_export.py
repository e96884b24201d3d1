"""LoRA export: merged weights reproduce base+adapter logits, adapter-only export reloads, grace_config.json
travels along, trainer state does not."""

from __future__ import annotations

import json
import os

import pytest
import torch

from grace_trl.settings import SETTINGS_FILE, GRACESettings


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from grace_trl.aliases import resolve_model_name

    return AutoTokenizer.from_pretrained(resolve_model_name("smollm2-135m"))


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory, tokenizer):
    """A tiny random Llama base folder and a LoRA checkpoint-like folder trained on top of it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id)
    base = AutoModelForCausalLM.from_config(config)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    base = AutoModelForCausalLM.from_pretrained(root / "base")  # records the base path in adapter_config.json
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 init_lora_weights=False, task_type="CAUSAL_LM"))
    ckpt = root / "checkpoint-10"
    peft_model.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    GRACESettings(instruction="Represent the sentence", max_new_tokens=48).save(str(ckpt))
    (ckpt / "optimizer.pt").write_bytes(b"not for export")
    (ckpt / "trainer_state.json").write_text("{}")
    ids = torch.tensor([tokenizer("GRACE turns rationales into embeddings.")["input_ids"]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    return root, ckpt, ids, expected


def _run(argv):
    from grace_trl.cli import main

    return main(["export", *argv])


def test_merge_reproduces_adapter_logits(lora_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, ckpt, ids, expected = lora_checkpoint
    out = tmp_path / "merged"
    assert _run(["--checkpoint", str(ckpt), "--output", str(out), "--merge"]) == 0
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", SETTINGS_FILE, "tokenizer.json"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "trainer_state.json"}
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(root / "base")
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, expected, atol=1e-4)  # the adapter mattered
    assert GRACESettings.load(str(out)) == GRACESettings.load(str(ckpt))
    ids = [AutoTokenizer.from_pretrained(path)("a b")["input_ids"] for path in (out, ckpt)]
    assert ids[0] == ids[1]


def test_adapter_export_reloads_and_repoints_base(lora_checkpoint, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root, ckpt, ids, expected = lora_checkpoint
    out = tmp_path / "adapter"
    assert _run(["--checkpoint", str(ckpt), "--output", str(out), "--adapter", "--base-model", "org/base-id"]) == 0
    names = set(os.listdir(out))
    assert {"adapter_config.json", "adapter_model.safetensors", SETTINGS_FILE, "tokenizer.json"} <= names
    assert "optimizer.pt" not in names and "trainer_state.json" not in names
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/base-id"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / "base"), out)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-4)


def test_full_checkpoint_export_and_errors(lora_checkpoint, tmp_path, capsys):
    root, ckpt, _, _ = lora_checkpoint
    full = tmp_path / "full"
    assert _run(["--checkpoint", str(root / "base"), "--output", str(full)]) == 0
    assert (full / "model.safetensors").is_file() and not (full / SETTINGS_FILE).exists()
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        _run(["--checkpoint", str(root / "base"), "--output", str(tmp_path / "x"), "--adapter"])
    with pytest.raises(FileExistsError, match="--overwrite"):
        _run(["--checkpoint", str(root / "base"), "--output", str(full)])
    assert _run(["--checkpoint", str(root / "base"), "--output", str(full), "--overwrite"]) == 0
    # missing inputs end in one line on stderr (status 2), not a traceback
    capsys.readouterr()
    assert _run(["--checkpoint", str(ckpt), "--output", str(tmp_path / "y"), "--base-model",
                 str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--base-model" in err and str(tmp_path / "missing") in err
    assert _run(["--checkpoint", str(tmp_path), "--output", str(tmp_path / "z")]) == 2
    assert "has neither adapter_config.json" in capsys.readouterr().err
