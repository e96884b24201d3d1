"""What makes GRACE learn: update schedule, fused anchor decode, auxiliary InfoNCE, dev-set evaluation."""

import csv
import os
import re

import pytest
import torch
from datasets import Dataset
from trl.models import unwrap_model_for_generation

from grace_trl import GRACEConfig
from grace_trl.encoder import GRACEEncoder
from grace_trl.evaluation.evaluators import STSEvaluator
from grace_trl.trainer import GRACETrainer, RowTemperature

EOS_BIAS = {"sequence_bias": {(2,): 9.0}}


def rows(n=8):
    return Dataset.from_dict({
        "query": [f"query number {i} about cats" for i in range(n)],
        "positive": [f"positive document {i} : a cat sleeps on the sofa" for i in range(n)],
        "negatives": [[f"negative {i} : the stock market fell"] for i in range(n)],
    })


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", seed=0,
                num_generations=2, per_device_train_batch_size=4, max_completion_length=6, max_steps=2,
                learning_rate=1e-3, logging_steps=1, save_strategy="no", num_sample_rationales=0)
    base.update(kw)
    return GRACEConfig(**base)


def digit(text: str) -> str:
    return re.search(r"(?:document|number|negative) (\d+)", text).group(1)


class RecordingTrainer(GRACETrainer):
    """Records every generation batch: each group's prompt and the anchors built for it."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.generations = []

    def build_rollout_embeddings(self, inputs, prompts, completion_ids_list):
        batch = super().build_rollout_embeddings(inputs, prompts, completion_ids_list)
        self.generations.append((list(prompts), list(self._last_anchor_texts), len(self._last_anchor_completions)))
        return batch


def test_loss_aggregation_defaults_to_the_reference_token_mean(tmp_path):
    assert config(tmp_path).loss_type == "dapo"


def test_steps_per_generation_reuses_one_generation_for_several_updates(tmp_path, tiny_model_path):
    # 4 groups x G=2 generated at once, split into 2 optimiser steps of 2 groups; num_iterations=2 replays them
    args = config(tmp_path, per_device_train_batch_size=4, steps_per_generation=2, num_iterations=2, max_steps=8,
                  generation_kwargs=EOS_BIAS)
    trainer = RecordingTrainer(tiny_model_path, args=args, train_dataset=rows(16))
    trainer.train()
    assert trainer.state.global_step == 8
    assert len(trainer.generations) == 2  # 8 optimiser steps / (2 steps per generation x 2 iterations)
    for prompts, anchors, n_anchor_completions in trainer.generations:
        assert len(prompts) == 8 and len(anchors) == 8 and n_anchor_completions == 8
        for g in range(4):
            group = prompts[2 * g: 2 * g + 2]
            assert group[0] == group[1]
            doc = digit(group[0][-1]["content"])
            # anchor i belongs to row i: the query and the negative of the same row as the rollouts
            assert anchors[2 * g].startswith("query") and digit(anchors[2 * g]) == doc
            assert anchors[2 * g + 1].startswith("negative") and digit(anchors[2 * g + 1]) == doc


def test_row_temperature_scales_each_row_and_greedy_rows_keep_the_argmax():
    scores = torch.tensor([[1.0, 2.0, 0.5], [1.0, 2.0, 0.5], [3.0, 1.0, 2.0]])
    out = RowTemperature([1.0, 0.5, 0.0], base=1.0)(None, scores.clone())
    assert torch.allclose(out[0], scores[0]) and torch.allclose(out[1], scores[1] * 2)
    assert out[2, 0] == 3.0 and torch.isinf(out[2, 1:]).all()


def test_fused_anchors_equal_a_separate_greedy_decode(tmp_path, tiny_model_path):
    args = config(tmp_path, anchor_temperature=0.0, max_completion_length=6)
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=rows(4))
    calls = []
    original = trainer.model.generate

    def counting_generate(*a, **kw):
        calls.append(kw["input_ids"].shape[0])
        return original(*a, **kw)

    trainer.model.generate = counting_generate
    batch = next(iter(trainer.get_train_dataloader()))
    trainer._generate_and_score_completions(batch)
    assert calls == [4 + 4]  # one decode: 2 groups x G=2 rollouts + (query, negative) x 2 groups
    fused = trainer._last_anchor_completions
    prompt_ids = [trainer.prompt_encoder(t).input_ids for t in trainer._last_anchor_texts]
    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as unwrapped, torch.no_grad():
        separate = trainer._generate_anchor_completions(unwrapped, prompt_ids)
    assert fused == separate


def test_contrastive_term_pools_the_same_span_as_the_reward(tmp_path, tiny_model_path):
    seen = {}

    def spy(prompts, completions, grace_embeddings, **kwargs):
        seen["batch"] = grace_embeddings[0]
        return [0.0] * len(prompts)

    args = config(tmp_path, contrastive_weight=1.0, generation_kwargs=EOS_BIAS)
    trainer = GRACETrainer(tiny_model_path, reward_funcs=["grace", spy], args=args, train_dataset=rows(4))
    trainer.model.train()  # as inside trainer.train(); the term is a training loss
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    batch = next(iter(trainer.get_train_dataloader()))
    out = trainer._generate_and_score_completions(batch)
    assert out["grace_group"].tolist() == [0, 0, 1, 1]
    pooled = {}
    original = trainer._compute_loss

    # the loss forward's pooled vectors (with gradient) must equal the reward's no-grad vectors
    import grace_trl.trainer as trainer_module

    real_masked_mean = trainer_module.masked_mean

    def recording_masked_mean(hidden, mask, normalize=True):
        pooled["v"] = real_masked_mean(hidden, mask, normalize)
        return pooled["v"]

    trainer_module.masked_mean = recording_masked_mean
    try:
        loss = original(trainer.model, out)
    finally:
        trainer_module.masked_mean = real_masked_mean
    assert torch.isfinite(loss) and loss.requires_grad
    assert torch.allclose(pooled["v"].detach(), seen["batch"].policy, atol=1e-4)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())
    assert trainer._metrics["train"]["grace/contrastive_loss"]


def test_eval_on_start_puts_the_untrained_score_first_in_the_curves(tmp_path, tiny_model_path):
    args = config(tmp_path, embedding_evaluator="sts-dev-sample", embedding_eval_limit=4, eval_strategy="steps",
                  eval_steps=1, eval_on_start=True, max_steps=1, generation_kwargs=EOS_BIAS)
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=rows(8))
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_sts_spearman" in h]
    assert [h["step"] for h in evals] == [0, 1]
    with open(os.path.join(args.output_dir, "training_curves.csv")) as f:
        table = list(csv.DictReader(f))
    first = [r for r in table if r["eval_sts_spearman"]][0]
    assert first["step"] == "0" and float(first["eval_sts_spearman"]) == pytest.approx(evals[0]["eval_sts_spearman"])
    trainer.create_model_card()  # the card's training table carries the dev score before and after
    with open(os.path.join(args.output_dir, "README.md")) as f:
        card = f.read()
    v0, v1 = evals[0]["eval_sts_spearman"], evals[-1]["eval_sts_spearman"]
    row = next(line for line in card.splitlines() if line.startswith("| dev eval"))
    assert "spearman" in row and f"| {v0:.2f} (step 0) → {v1:.2f} (step 1); " in row and "n = 4 pairs" in row


def test_embedding_evaluator_logs_dev_scores_curves_and_best_model(tmp_path, tiny_model_path, shared_data):
    args = config(tmp_path, embedding_evaluator="sts-dev", embedding_eval_limit=6,
                  embedding_eval_data_dir=str(shared_data), embedding_eval_without_rationale=True,
                  eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1, max_steps=2,
                  metric_for_best_model="eval_sts_spearman", greater_is_better=True, load_best_model_at_end=True,
                  generation_kwargs=EOS_BIAS)
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=rows(8))
    assert isinstance(trainer.embedding_evaluator, STSEvaluator) and len(trainer.embedding_evaluator.pairs) == 6
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_sts_spearman" in h]
    assert [h["step"] for h in evals] == [1, 2]
    for h in evals:
        assert -100.0 <= h["eval_sts_spearman"] <= 100.0
        assert 0.0 <= h["eval_sts_truncation_rate"] <= 1.0 and "eval_sts_spearman_no_rationale" in h
    assert trainer.state.best_model_checkpoint is not None
    with open(os.path.join(args.output_dir, "training_curves.csv")) as f:
        table = list(csv.DictReader(f))
    assert "eval_sts_spearman" in table[0] and any(r["eval_sts_spearman"] for r in table)
    assert os.path.isfile(os.path.join(args.output_dir, "training_curves.png"))

    # the evaluator embeds exactly like GRACEEncoder on the saved weights
    score = trainer.run_embedding_evaluator()["eval_sts_spearman"]
    trainer.save_model(str(tmp_path / "final"))
    trainer.processing_class.save_pretrained(str(tmp_path / "final"))
    encoder = GRACEEncoder.from_pretrained(str(tmp_path / "final"), device="cpu")
    assert abs(trainer.embedding_evaluator(encoder)["spearman"] - score) < 1e-3


class ContrastiveRecorder(GRACETrainer):
    """After each InfoNCE loss forward, recomputes the term from scratch with the weights that computed it.

    The expectation re-embeds each row (prompt tokens + its rationale cut at the first EOS) with the
    reward's no-grad embedding pass over the span ``pooling`` names, and scores it against the anchor bank.
    """

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.terms = []  # (logged value, expected value) per loss forward
        self.masked_rows = 0

    def _compute_loss(self, model, inputs):
        from grace_trl.generation import split_at_eos

        logged = self._metrics["train"]["grace/contrastive_loss"]
        n_before = len(logged)
        loss = super()._compute_loss(model, inputs)
        sequences, spans, kept = [], [], []
        for ids, m, comp, cm in zip(inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"],
                                    inputs["completion_mask"]):
            prompt = ids[m.bool()].tolist()
            rationale = split_at_eos(comp.tolist(), self._grace_eos_ids)[0]
            sequences.append(prompt + rationale)
            end = len(prompt) + len(rationale)
            spans.append((end - 1, end) if self.args.pooling == "last" else (len(prompt), end))
            kept.append(int(cm.sum()) == len(rationale))  # a masked truncated rollout is out of the loss
        self.masked_rows += kept.count(False)
        with torch.no_grad():
            vectors = self.compute_embeddings(self.accelerator.unwrap_model(model), sequences, spans)
            bank = self._grace_contrastive[0]
            logits = vectors @ bank.T / self.args.contrastive_temperature
            keep = torch.tensor(kept)
            expected = (torch.nn.functional.cross_entropy(logits[keep], inputs["grace_group"][keep]).item()
                        if keep.any() else float("nan"))
        self.terms.append((logged[n_before] if len(logged) > n_before else None, expected))
        return loss


@pytest.mark.parametrize("pooling", ["last", "rationale"])
def test_contrastive_term_through_prepare_inputs_pools_the_configured_span(tmp_path, tiny_model_path, pooling):
    # 4 groups generated at once, shuffled and split into 2 micro-batches; truncated rows masked out of the
    # policy loss still pool their rationale
    args = config(tmp_path, pooling=pooling, contrastive_weight=1.0, per_device_train_batch_size=4,
                  steps_per_generation=2, max_steps=2, mask_truncated_completions=True, generation_kwargs=EOS_BIAS)
    trainer = ContrastiveRecorder(tiny_model_path, args=args, train_dataset=rows(8))
    trainer.train()
    assert len(trainer.terms) == 2, "one loss forward per micro-batch"
    for logged, expected in trainer.terms:
        assert logged is not None, "a buffered micro-batch skipped the InfoNCE term"
        assert logged == pytest.approx(expected, rel=1e-4, abs=1e-5, nan_ok=True)
    assert trainer.masked_rows > 0, "no truncated rollout: the masked case was not exercised"
    assert any(expected == expected for _, expected in trainer.terms), "no term had a row to compare"
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all("grace/contrastive_loss" in h for h in logs)
    from grace_trl.pooling import get_backbone

    assert not get_backbone(trainer.model)._forward_hooks, "the hidden-state hook was left on the model"


def test_evaluation_inside_a_rollout_buffer_keeps_the_contrastive_term(tmp_path, tiny_model_path):
    # the evaluation after step 1 generates its own batch; step 2 still trains on the buffered one
    args = config(tmp_path, contrastive_weight=1.0, per_device_train_batch_size=4, steps_per_generation=2,
                  max_steps=2, eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=2,
                  generation_kwargs=EOS_BIAS)
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=rows(8), eval_dataset=rows(2))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "eval_loss" not in h]
    assert [h["step"] for h in logs] == [1, 2]
    assert all("grace/contrastive_loss" in h for h in logs), logs
    assert any("eval_loss" in h for h in trainer.state.log_history)


class NaNAnchorTrainer(GRACETrainer):
    """The first group's query anchor comes out of the embedding pass as NaN (an overflowing forward)."""

    def compute_embeddings(self, model, sequences, spans):
        vectors = super().compute_embeddings(model, sequences, spans).clone()
        n_rollouts = self.args.per_device_train_batch_size * self.args.steps_per_generation
        vectors[n_rollouts] = float("nan")
        return vectors


def test_non_finite_anchor_leaves_the_contrastive_loss_finite(tmp_path, tiny_model_path):
    args = config(tmp_path, contrastive_weight=1.0, max_steps=1, generation_kwargs=EOS_BIAS)
    trainer = NaNAnchorTrainer(tiny_model_path, args=args, train_dataset=rows(4))
    trainer.train()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert torch.isfinite(torch.tensor(float(log["loss"])))
    assert log["grace/contrastive_loss"] is not None and torch.isfinite(torch.tensor(log["grace/contrastive_loss"]))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_evaluator_between_logging_steps_leaves_the_training_metrics_alone(tmp_path, tiny_model_path):
    # evaluation at step 1, training metrics logged at step 2 over steps 1-2
    args = config(tmp_path, embedding_evaluator="sts-dev-sample", embedding_eval_limit=4, eval_strategy="steps",
                  eval_steps=1, logging_steps=2, max_steps=2, generation_kwargs=EOS_BIAS)
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=rows(8))
    trainer.train()
    history = trainer.state.log_history
    evals = [h for h in history if "eval_sts_spearman" in h]
    assert [h["step"] for h in evals] == [1, 2]
    assert not any(k in h for h in evals for k in ("reward", "loss", "grace/pos_sim")), evals
    train = [h for h in history if "loss" in h]
    assert [h["step"] for h in train] == [2] and "reward" in train[0] and "grace/truncation_rate" in train[0]
    with open(os.path.join(args.output_dir, "training_curves.csv")) as f:
        table = {r["step"]: r for r in csv.DictReader(f)}
    assert table["1"]["reward"] == "" and table["1"]["eval_sts_spearman"] != ""
    assert table["2"]["reward"] != ""


class FallingScore:
    """A user evaluator whose score falls at every call (a model getting worse)."""

    name = "toy"

    def __init__(self):
        self.calls = 0

    def __call__(self, encoder):
        self.calls += 1
        return {"spearman": 1.0 / self.calls}


def test_evaluate_with_eval_dataset_dict_runs_the_evaluator_once_and_early_stopping_sees_it(tmp_path,
                                                                                            tiny_model_path):
    import json

    from transformers import EarlyStoppingCallback

    from grace_trl.trainer import SAMPLES_FILE

    evaluator = FallingScore()
    args = config(tmp_path, eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1, max_steps=4,
                  per_device_eval_batch_size=2, load_best_model_at_end=True, metric_for_best_model="eval_toy_spearman",
                  greater_is_better=True, num_sample_rationales=1, generation_kwargs=EOS_BIAS)
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=rows(8), evaluator=evaluator,
                           eval_dataset={"a": rows(2), "b": rows(2)},
                           callbacks=[EarlyStoppingCallback(early_stopping_patience=1)])
    trainer.train()
    assert trainer.state.global_step == 2, "early stopping on eval_toy_spearman did not fire"
    assert evaluator.calls == 2, "the evaluator ran more than once per evaluation"
    evals = [h for h in trainer.state.log_history if "eval_toy_spearman" in h]
    assert [(h["step"], h["eval_toy_spearman"]) for h in evals] == [(1, 1.0), (2, 0.5)]
    assert all("eval_a_loss" in h for h in evals)  # logged with the first eval set's TRL metrics
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-1")
    with open(os.path.join(args.output_dir, SAMPLES_FILE)) as f:
        records = [json.loads(line) for line in f]
    assert {r["mode"] for r in records} == {"train", "eval"}
    assert [r["step"] for r in records if r["mode"] == "train"] == [0, 1]


def test_row_temperature_runs_before_the_sampling_warpers(tiny_model_path):
    from transformers import (
        AutoModelForCausalLM,
        GenerationConfig,
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from grace_trl.generation import ignoring_model_generation_config

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    rules = dict(do_sample=True, top_k=50, top_p=0.6, max_new_tokens=1, pad_token_id=2, eos_token_id=2)
    row_t = RowTemperature([1.3, 0.1], base=1.3)
    processors = model._get_logits_processor(GenerationConfig(temperature=1.3, **rules), input_ids_seq_length=4,
                                             logits_processor=LogitsProcessorList([row_t]), device="cpu")
    order = [type(p) for p in processors]
    assert order.index(RowTemperature) < order.index(TemperatureLogitsWarper) < order.index(TopKLogitsWarper)
    assert order.index(TopKLogitsWarper) < order.index(TopPLogitsWarper)

    prompt = torch.tensor([[1, 9707, 28, 2683, 314, 253, 5599, 30]])

    def first_scores(batch, temperature, processors=None):
        with ignoring_model_generation_config(model), torch.no_grad():
            out = model.generate(input_ids=batch, attention_mask=torch.ones_like(batch),
                                 generation_config=GenerationConfig(temperature=temperature, **rules),
                                 logits_processor=processors, output_scores=True, return_dict_in_generate=True)
        return out.scores[0]

    fused = first_scores(prompt.repeat(2, 1), 1.3, LogitsProcessorList([row_t]))
    rollout, anchor = first_scores(prompt, 1.3)[0], first_scores(prompt, 0.1)[0]
    kept = [torch.isfinite(s) for s in (fused[0], fused[1], rollout, anchor)]
    assert not torch.equal(kept[2], kept[3]), "top-p keeps the same tokens at both temperatures: proves nothing"
    pairs = ((fused[0], rollout, kept[0], kept[2]), (fused[1], anchor, kept[1], kept[3]))
    for got, want, got_kept, want_kept in pairs:
        assert torch.equal(got_kept, want_kept)  # filtered at the row's own temperature
        assert torch.allclose(got[got_kept], want[want_kept], atol=1e-4)
