"""The card TRL's create_model_card writes for a GRACE model: base model, GRACE, how to embed, escaped settings."""

from __future__ import annotations

import os

import pytest
import yaml
from datasets import Dataset

from grace_trl import GRACEConfig


def _card(path):
    text = open(path, encoding="utf-8").read()
    return yaml.safe_load(text.split("---")[1]), text


def test_trainer_card_names_the_base_model_and_grace(tmp_path):
    from grace_trl.trainer import GRACETrainer

    args = GRACEConfig(output_dir=str(tmp_path / "grace-sup"), use_cpu=True, bf16=False, report_to="none",
                       num_generations=2, per_device_train_batch_size=2, max_completion_length=8,
                       instruction="Rate | compare *these*")
    data = Dataset.from_dict({"query": ["q"], "positive": ["p"], "negatives": [["n"]]})
    trainer = GRACETrainer("smollm2-135m", args=args, train_dataset=data)
    trainer.create_model_card(model_name="grace-sup", dataset_name="sentence-transformers/all-nli")
    meta, text = _card(os.path.join(args.output_dir, "README.md"))
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert {"grace", "trl", "sentence-transformers"} <= set(meta["tags"])
    assert meta["datasets"] == ["sentence-transformers/all-nli"]
    assert "fine-tuned version of [HuggingFaceTB/SmolLM2-135M-Instruct]" in text and "[None]" not in text
    assert "https://huggingface.co/papers/2510.04506" in text and "@article{grace2025" in text
    assert "DeepSeekMath" not in text and "text-generation" not in text
    # a local card loads the folder by its name, never by a path of the machine that wrote it
    assert 'GRACEEncoder.from_pretrained("grace-sup")' in text
    assert 'load_sentence_transformer("grace-sup")' in text and "trust_remote_code=True)" not in text
    assert "`grace-sup` stands for the path of this folder" in text
    assert str(tmp_path) not in text and args.output_dir not in text
    # how to install what the snippets import, and no link to a PyPI project that does not exist
    assert "## Install" in text and "pip install -e ." in text and "pypi.org" not in text
    # the weights came from the embedded GGUF, not from the Hub release the card names
    assert "Q4_1 GGUF" in text and "dequantized to fp32" in text
    # sentence-transformers' prompt means something else here: the card says what
    assert "replaces GRACE's instruction inside the chat template" in text
    # settings are table cells: the chat tags show as text, a pipe does not split the cell
    assert "&lt;think&gt;&lt;/think&gt;" in text and "<think>" not in text
    assert "| instruction | Rate \\| compare \\*these\\* |" in text


def test_lora_output_keeps_its_card_through_peft_save_and_says_how_to_merge(tmp_path):
    from peft import LoraConfig

    from grace_trl.trainer import GRACETrainer

    args = GRACEConfig(output_dir=str(tmp_path / "grace-lora"), use_cpu=True, bf16=False, report_to="none",
                       num_generations=2, per_device_train_batch_size=2, max_completion_length=8)
    data = Dataset.from_dict({"query": ["q"], "positive": ["p"], "negatives": [["n"]]})
    trainer = GRACETrainer("smollm2-135m", args=args, train_dataset=data,
                           peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainer.create_model_card(model_name="grace-lora")
    trainer.save_model(args.output_dir)  # peft's save_pretrained rewrites an existing README.md's metadata
    assert os.path.isfile(os.path.join(args.output_dir, "adapter_config.json"))
    meta, text = _card(os.path.join(args.output_dir, "README.md"))
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # not the local path peft would write
    assert meta["library_name"] == "sentence-transformers" and {"lora", "peft", "grace"} <= set(meta["tags"])
    assert str(tmp_path) not in text and os.path.expanduser("~") + "/.cache" not in text
    assert "LoRA adapter" in text and "grace-trl export --checkpoint" in text
    assert "ordinary causal LM" not in text


def test_push_card_model_index_through_huggingface_hub(tmp_path, tiny_model_path):
    import shutil

    from huggingface_hub import ModelCard

    from grace_trl.hub import prepare_hub_folder
    from grace_trl.settings import GRACESettings

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_path, ckpt)
    GRACESettings().save(str(ckpt))
    out = prepare_hub_folder(str(ckpt), str(tmp_path / "repo"), "org/grace-tiny",
                             {"STSBenchmark": {"cosine_spearman": 0.8123}}, base_model="smollm2-135m")
    card = ModelCard.load(os.path.join(out, "README.md"))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    (result,) = card.data.eval_results
    assert (result.dataset_name, result.metric_type, result.metric_value) == ("STSBenchmark", "cosine_spearman",
                                                                              0.8123)
    assert (result.task_type, result.dataset_type, result.dataset_split) == ("sentence-similarity",
                                                                             "mteb/stsbenchmark-sts", "test")
    assert "| STSBenchmark | mteb/stsbenchmark-sts | test | full | cosine\\_spearman | 0.8123 |" in card.text
    assert 'GRACEEncoder.from_pretrained("org/grace-tiny")' in card.text and "stands for the path" not in card.text


def test_card_results_keep_task_type_split_and_sample_size():
    from huggingface_hub import EvalResult

    from grace_trl.model_card import build_model_card
    from grace_trl.settings import GRACESettings

    card = build_model_card("org/m", GRACESettings(), results={"SciFact": {"ndcg_at_10": 0.61}})
    (scifact,) = card.data.eval_results
    assert scifact.task_type != "sentence-similarity" and scifact.dataset_split == "test"
    reduced = EvalResult(task_type="sentence-similarity", dataset_type="mteb/stsbenchmark-sts",
                         dataset_name="STSBenchmark", dataset_split="test", dataset_args={"n": 200, "reduced": True},
                         metric_type="cosine_spearman", metric_value=0.7)
    card = build_model_card("org/m", GRACESettings(), results=[reduced])
    assert "| STSBenchmark (reduced) | mteb/stsbenchmark-sts | test | 200 | cosine\\_spearman | 0.7000 |" in card.text
    with pytest.raises(ValueError, match="not an mteb task name"):
        build_model_card("org/m", GRACESettings(), results={"my-sts": {"spearman": 0.5}})


def test_trainer_card_files_the_dev_score_with_its_split_and_n(tmp_path, tiny_model_path):
    from grace_trl.trainer import GRACETrainer

    args = GRACEConfig(output_dir=str(tmp_path / "run"), use_cpu=True, bf16=False, report_to="none",
                       num_generations=2, per_device_train_batch_size=2, max_completion_length=8,
                       embedding_evaluator="sts-dev-sample", embedding_eval_limit=20)
    data = Dataset.from_dict({"query": ["q"], "positive": ["p"], "negatives": [["n"]]})
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=data)
    trainer.state.log_history += [{"step": 0, "eval_sts_spearman": 31.0}, {"step": 21, "eval_sts_spearman": 35.5}]
    trainer.create_model_card()
    meta, text = _card(os.path.join(args.output_dir, "README.md"))
    (entry,) = meta["model-index"][0]["results"]
    assert entry["dataset"]["split"] == "dev" and entry["dataset"]["args"] == {"n": 20}
    assert entry["metrics"][0] == {"type": "cosine_spearman", "value": 0.355}
    assert ("31.00 (step 0) → 35.50 (step 21); STS-B dev sample shipped with grace\\_trl, dev split, "
            "n = 20 pairs") in text
