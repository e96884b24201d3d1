"""The card TRL's create_model_card writes for a GRACE model: base model, GRACE, how to embed, escaped settings."""

from __future__ import annotations

import os

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
    assert f'GRACEEncoder.from_pretrained("{args.output_dir}")' in text
    assert f'load_sentence_transformer("{args.output_dir}")' in text and "trust_remote_code=True)" not in text
    # settings are table cells: the chat tags show as text, a pipe does not split the cell
    assert "&lt;think&gt;&lt;/think&gt;" in text and "<think>" not in text
    assert "| instruction | Rate \\| compare \\*these\\* |" in text


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
    assert "| STSBenchmark | cosine\\_spearman | 0.8123 |" in card.text
