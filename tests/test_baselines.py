"""CL baseline: data mapping, a short MNRL run on a tiny model, and evaluation of the saved folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from grace_trl.baselines import CLConfig, build_cl_model, load_triples, train_cl
from grace_trl.cli_args import UsageError
from grace_trl.commands.train_cl import parse_args as _parse

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "smollm2-135m" / "cl_cpu.yaml"


def test_load_triples_from_the_grace_sample():
    ds = load_triples("sample-nli", limit=5)
    assert ds.column_names == ["anchor", "positive", "negative"] and len(ds) == 5
    assert all(isinstance(x, str) and x for x in ds["negative"])


def test_recipe_parses_and_flags_override():
    cfg = _parse(["--config", str(RECIPE), "--max_steps", "3", "--output_dir", "/tmp/x"])
    assert cfg.model_name_or_path == "smollm2-135m" and cfg.dataset_name == "sample-nli"
    assert cfg.max_steps == 3 and cfg.output_dir == "/tmp/x" and cfg.use_cpu is True


def test_every_sentence_transformers_training_argument_is_accepted():
    from sentence_transformers import SentenceTransformerTrainingArguments

    cfg = _parse(["--config", str(RECIPE), "--lr_scheduler_type", "cosine", "--gradient_accumulation_steps", "2",
                  "--batch_sampler", "batch_sampler"])
    assert isinstance(cfg, SentenceTransformerTrainingArguments)
    assert cfg.lr_scheduler_type == "cosine" and cfg.gradient_accumulation_steps == 2
    assert cfg.batch_sampler == "batch_sampler"
    assert _parse(["--config", str(RECIPE)]).batch_sampler == "no_duplicates"  # the baseline's default


def test_bad_recipe_key_is_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: x\nlearning_rat: 1e-5\n")
    with pytest.raises(UsageError, match="unknown key 'learning_rat'; did you mean 'learning_rate'"):
        _parse(["--config", str(bad)])
    assert _parse(["--config", str(RECIPE), "--max-steps", "4"]).max_steps == 4
    with pytest.raises(UsageError, match="--max_step"):
        _parse(["--max_step", "4"])  # no prefix matching


def test_cl_training_changes_embeddings_and_saves(tiny_model_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    before = build_cl_model(tiny_model_path, max_seq_length=32, device="cpu")
    probe = ["A man is playing a guitar.", "Two dogs run in a field."]
    e0 = before.encode(probe, convert_to_numpy=True)
    out = tmp_path / "cl"
    cfg = CLConfig(model_name_or_path=tiny_model_path, dataset_name="sample-nli", max_samples=32,
                   output_dir=str(out), max_seq_length=32, max_steps=4, per_device_train_batch_size=8,
                   learning_rate=1e-3, use_cpu=True, logging_steps=1)
    train_cl(cfg)
    assert (out / "modules.json").is_file()
    reloaded = SentenceTransformer(str(out), device="cpu")
    e1 = reloaded.encode(probe, convert_to_numpy=True)
    assert e1.shape == e0.shape == (2, 64)
    assert not np.allclose(e0, e1, atol=1e-4)  # the optimiser moved the weights

    from grace_trl.evaluation.runner import plan_runs

    runs = plan_runs([f"cl={out}"], no_rationale=False, both=True)
    assert len(runs) == 1 and runs[0].kind == "sentence-transformers" and runs[0].use_rationale is False
