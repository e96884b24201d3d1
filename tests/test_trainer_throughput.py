"""Where a run's time goes (timing.json) and the step-0 evaluation that is read back instead of decoded again."""

import json
import os

import pytest
from test_trainer_learning import EOS_BIAS, rows

from grace_trl import GRACEConfig
from grace_trl.encoder import chunk_bounds
from grace_trl.trainer import GRACETrainer, format_seconds, projected_evaluation_seconds


def config(out, **kw):
    base = dict(output_dir=str(out), use_cpu=True, bf16=False, report_to="none", seed=0, num_generations=2,
                per_device_train_batch_size=4, max_completion_length=6, max_steps=2, learning_rate=1e-3,
                logging_steps=1, save_strategy="no", num_sample_rationales=0, generation_kwargs=EOS_BIAS)
    base.update(kw)
    return GRACEConfig(**base)


def test_timing_json_splits_the_run_into_generation_scoring_training_and_evaluation(tmp_path, tiny_model_path):
    args = config(tmp_path / "out", steps_per_generation=2, max_steps=4, embedding_evaluator="sts-dev-sample",
                  embedding_eval_limit=4, eval_strategy="steps", eval_steps=2, embedding_eval_cache_dir="none")
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=rows(8))
    trainer.train()
    with open(os.path.join(args.output_dir, "timing.json")) as f:
        timing = json.load(f)
    # 4 optimiser steps of 4 rollouts, 2 steps per generation: 2 generation batches of 8 rollouts
    assert timing["rollouts"] == 16
    seconds = timing["seconds"]
    assert set(seconds) == {"generation", "scoring", "evaluation", "training"}
    assert all(v >= 0 for v in seconds.values()) and seconds["generation"] > 0 and seconds["evaluation"] > 0
    assert sum(seconds.values()) == pytest.approx(timing["run_seconds"], abs=0.5)
    assert sum(timing["share"].values()) == pytest.approx(1.0, abs=0.02)
    # run_seconds is rounded to 0.01 s and the rate to 0.01: the rate lies between the two bounds they allow
    low, high = 60 * 16 / (timing["run_seconds"] + 0.005), 60 * 16 / (timing["run_seconds"] - 0.005)
    assert low - 0.005 <= timing["rollouts_per_minute"] <= high + 0.005
    runtimes = [h["eval_sts_runtime"] for h in trainer.state.log_history if "eval_sts_runtime" in h]
    assert len(runtimes) == 2 and seconds["evaluation"] == pytest.approx(sum(runtimes), abs=0.2)


def test_the_untrained_policy_is_evaluated_from_the_cache_on_a_second_run(tmp_path, tiny_model_path):
    cache = tmp_path / "rationales"

    def run(name):
        args = config(tmp_path / name, max_steps=1, embedding_evaluator="sts-dev-sample", embedding_eval_limit=4,
                      eval_strategy="steps", eval_steps=1, eval_on_start=True, embedding_eval_cache_dir=str(cache))
        trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=rows(8))
        trainer.train()
        evals = [h for h in trainer.state.log_history if "eval_sts_spearman" in h]
        assert [h["step"] for h in evals] == [0, 1]
        return evals

    first = run("a")
    entries = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert entries, "the step-0 evaluation wrote no cache entries"
    second = run("b")
    # step 0 read back: the same score, nothing new written; the trained policy (step 1) is never cached
    assert second[0]["eval_sts_spearman"] == pytest.approx(first[0]["eval_sts_spearman"])
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == entries


def test_a_lora_run_reads_the_base_models_step0_evaluation_and_generation_check_from_the_cache(
        tmp_path, tiny_model_path, monkeypatch):
    from peft import LoraConfig

    monkeypatch.setenv("GRACE_TRL_CACHE", str(tmp_path / "cache"))
    cache = tmp_path / "rationales"

    def run(name, **kw):
        args = config(tmp_path / name, max_steps=1, embedding_evaluator="sts-dev-sample", embedding_eval_limit=4,
                      eval_strategy="steps", eval_steps=1, eval_on_start=True, embedding_eval_cache_dir=str(cache),
                      generation_check=True)
        trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=rows(8), **kw)
        trainer.train()
        return [h for h in trainer.state.log_history if "eval_sts_spearman" in h]

    def entries():
        return sorted(str(p) for p in [*cache.rglob("*"), *(tmp_path / "cache").rglob("*")] if p.is_file())

    full = run("full")
    before = entries()
    lora = run("lora", peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    # the fresh adapter is the base model's function: step 0 and the reference check come from the cache
    assert lora[0]["step"] == 0 and lora[0]["eval_sts_spearman"] == pytest.approx(full[0]["eval_sts_spearman"])
    assert entries() == before
    with open(tmp_path / "lora" / "generation_check.json") as f:
        assert json.load(f)["reference"]["perplexity"] is not None


def test_eval_cache_can_be_switched_off(tmp_path, tiny_model_path):
    args = config(tmp_path / "out", embedding_evaluator="sts-dev-sample", embedding_eval_cache_dir="none")
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=rows(8))
    assert trainer._eval_cache_dir() is None
    args = config(tmp_path / "out2", embedding_evaluator="sts-dev-sample")
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=rows(8))
    assert trainer._eval_cache_dir().endswith(os.path.join("grace_trl", "rationales")) or \
        trainer._eval_cache_dir().endswith("rationales")
    trainer.state.global_step = 3
    assert trainer._eval_cache_dir() is None


def test_generation_check_at_the_end_compares_with_the_starting_model(tmp_path, tiny_model_path, monkeypatch):
    monkeypatch.setenv("GRACE_TRL_CACHE", str(tmp_path / "cache"))
    args = config(tmp_path / "out", max_steps=1, generation_check=True)
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=rows(8))
    trainer.train()
    with open(os.path.join(args.output_dir, "generation_check.json")) as f:
        check = json.load(f)
    assert check["n_questions"] >= 50 and len(check["answers"]) == check["n_questions"]
    assert {"regressions", "gains", "regression_rate", "perplexity_change", "kept"} <= set(check)
    # the starting model's result was cached by its weights and is the reference
    cached = list((tmp_path / "cache" / "generation_check").glob("*.json"))
    assert len(cached) == 1
    reference = json.loads(cached[0].read_text())
    assert check["reference"]["perplexity"] == pytest.approx(reference["perplexity"])
    # lr 1e-3 on a random model moves the weights: the perplexity changed
    assert check["perplexity"] != pytest.approx(reference["perplexity"])
    trainer.create_model_card()
    with open(os.path.join(args.output_dir, "README.md")) as f:
        card = f.read()
    assert "generation check" in card and f"{check['perplexity']:.2f}" in card


def test_the_projected_length_of_an_evaluation_scales_its_first_rationales():
    # 2 s of setup, then 16 rationales in 12 s: 0.75 s each for the 384 still to decode
    assert projected_evaluation_seconds(14.0, 12.0, 16, 384) == pytest.approx(302.0)
    assert projected_evaluation_seconds(5.0, 4.0, 8, 0) == pytest.approx(5.0)
    for bad in [(1.0, 1.0, 0, 10), (1.0, 2.0, 1, 10), (1.0, 1.0, 1, -1), (1.0, -1.0, 1, 10)]:
        with pytest.raises(ValueError):
            projected_evaluation_seconds(*bad)
    assert [format_seconds(x) for x in (45, 210, 7200)] == ["45 s", "3.5 min", "2.0 h"]
    # the encoder times one generation batch first, then goes on in its usual chunks
    assert chunk_bounds(10, 4, first=2) == [(0, 2), (2, 6), (6, 10)]
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)] and chunk_bounds(3, 64, first=16) == [(0, 3)]


def test_the_first_evaluation_logs_how_long_it_will_take(tmp_path, tiny_model_path, caplog):
    import logging

    args = config(tmp_path / "out", embedding_evaluator="sts-dev-sample", embedding_eval_limit=4,
                  embedding_batch_size=2, embedding_eval_cache_dir="none")
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=rows(8))
    n = trainer.embedding_evaluator.rationale_texts()
    assert n > 2
    with caplog.at_level(logging.INFO, logger="grace_trl"):
        scores = trainer.run_embedding_evaluator()
    assert "how long it takes follows after its first batch of rationales" in caplog.text
    assert f"dev-set evaluation: the first 2 of {n} rationales took " in caplog.text
    assert "the whole evaluation will take about " in caplog.text
    caplog.clear()
    trainer.state.log_history.append({**scores, "step": 0})
    with caplog.at_level(logging.INFO, logger="grace_trl"):
        trainer.run_embedding_evaluator()
    assert "the last evaluation took" in caplog.text and "the whole evaluation will take" not in caplog.text


@pytest.mark.parametrize("merge,fuse", [(True, True), (True, False), (False, True)])
def test_a_lora_policy_decodes_through_merged_weights_and_trains_only_the_adapter(tmp_path, tiny_model_path, merge,
                                                                                  fuse):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    args = config(tmp_path / "out", max_steps=2, steps_per_generation=2, merge_lora_for_generation=merge,
                  fuse_anchor_generation=fuse,
                  embedding_evaluator="sts-dev-sample", embedding_eval_limit=4, eval_strategy="steps", eval_steps=2,
                  embedding_eval_cache_dir="none")
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=rows(8),
                           peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
    lora_model = trainer.model.base_model
    merges, original = [], lora_model.merge_adapter

    def counting_merge(*a, **kw):
        merges.append(trainer.state.global_step)
        return original(*a, **kw)

    lora_model.merge_adapter = counting_merge
    trainer.train()
    # per generation batch: the rollout decode (fused with the anchors', or TRL's) and the reward's pooling (with the
    # separate anchor decode), when merge is on; the step-2 evaluation (eval mode: the same function) always
    assert merges == ([0, 0, 2] if merge else [2])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).state_dict()
    trained = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
               for k, v in trainer.model.state_dict().items() if "lora_" not in k}
    assert trained.keys() == base.keys() and all(torch.equal(trained[k], base[k]) for k in base)
    lora_b = [v for k, v in trainer.model.state_dict().items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # the adapter moved off its zero start
    assert all(not m.merged for m in trainer.model.modules() if hasattr(m, "merged"))
    assert any("eval_sts_spearman" in h for h in trainer.state.log_history)
