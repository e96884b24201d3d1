"""Every saved GRACE checkpoint is a sentence-transformers model giving GRACE's no-rationale embedding, and
GRACEEncoder speaks sentence-transformers' argument names."""

from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest
import torch

from grace_trl import GRACEConfig
from grace_trl.settings import GRACESettings

INSTRUCTION = "Retrieve sentences that mean the same"


def sts_sentences(shared_data, n=12):
    with open(shared_data / "STSBenchmark" / "sts-test.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:n]
    return [r[5] for r in rows] + [r[6] for r in rows]


@pytest.mark.slow
def test_trained_smollm2_checkpoint_loads_in_sentence_transformers(tmp_path, shared_data):
    from sentence_transformers import SentenceTransformer

    from grace_trl.data import load_grace_dataset
    from grace_trl.encoder import GRACEEncoder
    from grace_trl.trainer import GRACETrainer

    args = GRACEConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", seed=0,
                       num_generations=2, per_device_train_batch_size=2, max_completion_length=8, max_steps=1,
                       learning_rate=1e-5, save_strategy="steps", save_steps=1, num_sample_rationales=0)
    trainer = GRACETrainer("smollm2-135m", args=args, train_dataset=load_grace_dataset("sample-nli", limit=2))
    trainer.train()
    trainer.save_model(args.output_dir)
    texts = sts_sentences(shared_data)

    for folder in (args.output_dir, os.path.join(args.output_dir, "checkpoint-1")):
        # custom code runs only when asked: no silent fallback to a different pooling
        with pytest.raises(ValueError, match="trust_remote_code"):
            SentenceTransformer(folder, device="cpu", local_files_only=True)
        st = SentenceTransformer(folder, device="cpu", local_files_only=True, trust_remote_code=True)
        encoder = GRACEEncoder.from_pretrained(folder, device="cpu")
        got = st.encode(texts, batch_size=8)
        expected = encoder.encode(texts, use_rationale=False, show_progress_bar=False)
        assert got.shape == expected.shape == (len(texts), 576)
        assert float((got * expected).sum(axis=1).min()) >= 0.999
        query = st.encode_query(texts[:4])
        assert float((query * expected[:4]).sum(axis=1).min()) >= 0.999
        # a sentence-transformers prompt is GRACE's instruction, on both sides
        got_p = st.encode(texts[:4], prompt=INSTRUCTION)
        exp_p = encoder.encode(texts[:4], use_rationale=False, prompt=INSTRUCTION, show_progress_bar=False)
        assert float((got_p * exp_p).sum(axis=1).min()) >= 0.999
        assert float((got_p * expected[:4]).sum(axis=1).max()) < 0.999


@pytest.fixture()
def checkpoint(tmp_path, tiny_model_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_path, ckpt)
    GRACESettings(instruction="Represent the sentence", max_new_tokens=8).save(str(ckpt))
    return ckpt


def test_export_writes_a_sentence_transformers_model(checkpoint, tmp_path, shared_data):
    from sentence_transformers import SentenceTransformer

    from grace_trl.commands.export import export_checkpoint
    from grace_trl.encoder import GRACEEncoder

    out = tmp_path / "export"
    export_checkpoint(str(checkpoint), str(out))
    texts = sts_sentences(shared_data, 4)
    st = SentenceTransformer(str(out), device="cpu", local_files_only=True, trust_remote_code=True)
    expected = GRACEEncoder.from_pretrained(str(out), device="cpu").encode(texts, use_rationale=False,
                                                                           show_progress_bar=False)
    # a random tiny model maps all texts close together, so exactness is checked element-wise
    np.testing.assert_allclose(st.encode(texts), expected, atol=1e-4)
    # sentence-transformers' own save keeps a complete GRACE checkpoint (causal-LM weights + settings)
    resaved = tmp_path / "resaved"
    st.save(str(resaved))
    assert GRACESettings.load(str(resaved)) == GRACESettings.load(str(checkpoint))
    again = SentenceTransformer(str(resaved), device="cpu", local_files_only=True, trust_remote_code=True)
    np.testing.assert_allclose(again.encode(texts), st.encode(texts), atol=1e-5)


def test_lora_checkpoint_saved_by_the_trainer_loads(tmp_path, tiny_model_path):
    from datasets import Dataset
    from peft import LoraConfig
    from sentence_transformers import SentenceTransformer

    from grace_trl.encoder import GRACEEncoder
    from grace_trl.trainer import GRACETrainer

    args = GRACEConfig(output_dir=str(tmp_path / "lora"), use_cpu=True, bf16=False, report_to="none", seed=0,
                       mode="unsupervised", num_generations=2, per_device_train_batch_size=2,
                       max_completion_length=4, max_steps=1, save_strategy="no", num_sample_rationales=0)
    data = Dataset.from_dict({"text": ["a cat sleeps", "the market fell"]})
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=data,
                           peft_config=LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    trainer.train()
    trainer.save_model(args.output_dir)
    assert os.path.isfile(os.path.join(args.output_dir, "adapter_config.json"))
    texts = ["A man is playing a guitar.", "Someone plays an instrument."]
    st = SentenceTransformer(args.output_dir, device="cpu", local_files_only=True, trust_remote_code=True)
    expected = GRACEEncoder.from_pretrained(args.output_dir, device="cpu").encode(texts, use_rationale=False,
                                                                                  show_progress_bar=False)
    np.testing.assert_allclose(st.encode(texts), expected, atol=1e-4)


@pytest.fixture()
def encoder(checkpoint):
    from grace_trl.encoder import GRACEEncoder

    return GRACEEncoder.from_pretrained(str(checkpoint), device="cpu")


def test_encoder_accepts_sentence_transformers_arguments(encoder):
    texts = ["A man is playing a guitar.", "Someone plays an instrument."]
    kw = dict(use_rationale=False, show_progress_bar=False)
    base = encoder.encode(texts, **kw)
    raw = encoder.encode(texts, normalize_embeddings=False, **kw)
    assert np.linalg.norm(raw, axis=1).min() > 1.01 or np.linalg.norm(raw, axis=1).max() < 0.99
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), base, atol=1e-5)
    tensor = encoder.encode(texts, convert_to_tensor=True, **kw)
    assert isinstance(tensor, torch.Tensor) and torch.allclose(tensor, torch.from_numpy(base), atol=1e-6)
    # prompt == instruction; prompt_name looks it up in encoder.prompts
    np.testing.assert_allclose(encoder.encode(texts, prompt="Find the topic", **kw),
                               encoder.encode(texts, instruction="Find the topic", **kw), atol=1e-6)
    encoder.prompts = {"query": "Find the topic"}
    np.testing.assert_allclose(encoder.encode_query(texts, **kw), encoder.encode(texts, prompt="Find the topic", **kw),
                               atol=1e-6)
    np.testing.assert_allclose(encoder.encode_document(texts, **kw), base, atol=1e-6)  # no "document" prompt
    with pytest.raises(ValueError, match=r"prompt_name 'passage' is not in encoder.prompts \(known: \['query'\]\)"):
        encoder.encode(texts, prompt_name="passage", **kw)
    with pytest.raises(ValueError, match="either prompt or instruction"):
        encoder.encode(texts, prompt="x", instruction="y", **kw)


def test_sentence_transformers_files_take_the_models_context_quietly(checkpoint, caplog):
    import json
    import logging

    from sentence_transformers import SentenceTransformer

    from grace_trl.st_module import MODULE_CONFIG_FILE, write_sentence_transformers_files

    with caplog.at_level(logging.INFO):
        write_sentence_transformers_files(str(checkpoint))
    assert "Saving model to" not in caplog.text  # the scratch folder is no news to a user
    assert json.loads((checkpoint / MODULE_CONFIG_FILE).read_text())["max_seq_length"] == 1024  # the tiny model's
    st = SentenceTransformer(str(checkpoint), device="cpu", local_files_only=True, trust_remote_code=True)
    assert st.max_seq_length == 1024
