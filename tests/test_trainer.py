"""GRACETrainer on real TRL: group layout, anchors kept out of the loss, training, saving, resume."""

import json
import os

import pytest
import torch
from datasets import Dataset

from grace_trl import GRACEConfig
from grace_trl.settings import GRACESettings
from grace_trl.trainer import SAMPLES_FILE, GRACETrainer

BRIEF = "Explain the text briefly: reasoning in <think></think> tags, then a one-sentence summary."


def sup_rows(n=4):
    return Dataset.from_dict({
        "query": [f"query number {i} about cats" for i in range(n)],
        "positive": [f"positive document {i} : a cat sleeps on the sofa" for i in range(n)],
        "negatives": [[f"negative {i} : the stock market fell"] for i in range(n)],
    })


EOS = 2  # SmolLM2's <|im_end|>
# A random tiny model almost never ends a rationale; a bias on EOS while sampling gives a mix of
# finished and truncated rollouts, so rewards (and advantages) differ within a group.
EOS_BIAS = {"sequence_bias": {(EOS,): 9.0}}


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", seed=0,
                num_generations=2, per_device_train_batch_size=4, max_completion_length=8, max_steps=2,
                learning_rate=1e-3, logging_steps=1, save_strategy="no", num_sample_rationales=1)
    base.update(kw)
    return GRACEConfig(**base)


def test_group_layout_and_anchors_outside_the_loss(tmp_path, tiny_model_path):
    seen = {}

    def spy_reward(prompts, completions, grace_embeddings, **kwargs):
        seen["batch"] = grace_embeddings[0]
        seen["prompts"] = prompts
        return [0.0] * len(prompts)

    trainer = GRACETrainer(tiny_model_path, reward_funcs=["grace", spy_reward], args=config(tmp_path),
                           train_dataset=sup_rows())
    rows = next(iter(trainer.get_train_dataloader()))
    out = trainer._generate_and_score_completions(rows)
    tok = trainer.grace_tokenizer
    # only the 2 groups x G=2 policy rollouts are in the loss batch; groups are contiguous
    assert out["prompt_ids"].shape[0] == 4
    prompts = [tok.decode(ids[m.bool()]) for ids, m in zip(out["prompt_ids"], out["prompt_mask"])]
    assert prompts[0] == prompts[1] and prompts[2] == prompts[3] and prompts[0] != prompts[2]
    assert all("positive document" in p and "query number" not in p for p in prompts)
    # anchors: one query + one negative per group, generated but never part of the loss batch
    texts = trainer._last_anchor_texts
    assert len(texts) == 4 and texts[0].startswith("query") and texts[1].startswith("negative")
    batch = seen["batch"]
    assert batch.policy.shape[0] == 4 and batch.anchors.shape[0] == 2 and batch.negatives.shape[:2] == (2, 1)
    assert torch.allclose(batch.policy.norm(dim=-1), torch.ones(4), atol=1e-5)
    # GRPO advantages: group-mean baseline, no std scaling -> they sum to zero within each group
    adv = out["advantages"].view(2, 2)
    assert torch.allclose(adv.sum(1), torch.zeros(2), atol=1e-5)


def test_invalid_layout_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_generations"):
        config(tmp_path, num_generations=4, per_device_train_batch_size=2)
    with pytest.raises(ValueError, match="reward_variant"):
        config(tmp_path, reward_variant="other")


def test_bad_dataset_fails_before_training(tmp_path, tiny_model_path):
    bad = Dataset.from_dict({"query": ["q", "q"], "positive": ["p", ""], "negatives": [["n"], ["n"]]})
    with pytest.raises(ValueError, match="row 1, field 'positive'"):
        GRACETrainer(tiny_model_path, args=config(tmp_path), train_dataset=bad)


def test_unsupervised_train_save_and_resume(tmp_path, tiny_model_path):
    data = Dataset.from_dict({"text": [f"sentence {i} about the weather" for i in range(8)]})
    args = config(tmp_path, mode="unsupervised", max_steps=2, save_strategy="steps", save_steps=1,
                  generation_kwargs=EOS_BIAS)
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=data)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "weights did not change"
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(float(h["loss"]))) for h in logs)
    assert "grace/pos_sim" in logs[0] and "grace/truncation_rate" in logs[0]
    ckpt = os.path.join(args.output_dir, "checkpoint-1")
    settings = GRACESettings.load(ckpt)
    assert settings is not None and settings.mode == "unsupervised" and settings.max_new_tokens == 8
    samples = [json.loads(line) for line in open(os.path.join(args.output_dir, SAMPLES_FILE))]
    assert samples and {"text", "rationale", "reward", "anchor_rationale"} <= set(samples[0])

    # an interrupted run resumes from checkpoint-1 and finishes the remaining step
    args2 = config(tmp_path, mode="unsupervised", max_steps=2, save_strategy="steps", save_steps=1,
                   generation_kwargs=EOS_BIAS)
    resumed = GRACETrainer(tiny_model_path, args=args2, train_dataset=data)
    resumed.train(resume_from_checkpoint=ckpt)
    assert resumed.state.global_step == 2
    assert len([h for h in resumed.state.log_history if "loss" in h]) == 2  # step 1 restored + step 2 run


@pytest.mark.slow
def test_two_steps_on_real_smollm2(tmp_path, smollm2_path):
    from grace_trl.data import load_grace_dataset

    data = load_grace_dataset("sample-nli", limit=4)
    args = config(tmp_path, system_prompt=BRIEF, max_completion_length=40, learning_rate=1e-5,
                  per_device_train_batch_size=2, save_strategy="no")
    trainer = GRACETrainer("smollm2-135m", args=args, train_dataset=data)
    trainer.train()
    trainer.save_model(args.output_dir)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        assert torch.isfinite(torch.tensor(float(h["loss"])))
        assert 0.0 <= float(h["grace/truncation_rate"]) <= 1.0
        # similarities are logged over finished rationales; a step where every rollout was cut has none
        assert ("grace/pos_sim" in h) == (float(h["grace/truncation_rate"]) < 1.0)
    settings = GRACESettings.load(args.output_dir)
    assert settings.system_prompt == BRIEF and settings.pooling == "mean"
    assert os.path.isfile(os.path.join(args.output_dir, "model.safetensors"))


def _greedy(model, prompt_ids, max_new_tokens, eos, **rules):
    """Reference greedy decoding under explicitly given rules only (one prompt, no padding)."""
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        out = model.generate(torch.tensor([prompt_ids]), generation_config=GenerationConfig(
            do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos, **rules))
    finally:
        model.generation_config = saved
    row = out[0, len(prompt_ids):].tolist()
    return row[: row.index(eos) + 1] if eos in row else row


def _anchor_run(tmp_path, model_path, **kw):
    trainer = GRACETrainer(model_path, args=config(tmp_path, anchor_temperature=0.0, **kw), train_dataset=sup_rows())
    rows = next(iter(trainer.get_train_dataloader()))
    trainer._generate_and_score_completions(rows)
    return trainer


def test_anchors_ignore_the_checkpoint_generation_config(tmp_path, penalised_model_path):
    trainer = _anchor_run(tmp_path, penalised_model_path)
    model = trainer.model
    got = trainer._last_anchor_completions
    want = [_greedy(model, trainer.prompt_encoder(t).input_ids, 8, EOS) for t in trainer._last_anchor_texts]
    penalised = [_greedy(model, trainer.prompt_encoder(t).input_ids, 8, EOS, repetition_penalty=50.0,
                         no_repeat_ngram_size=1) for t in trainer._last_anchor_texts]
    assert want != penalised, "the penalty must change greedy decoding, or this test proves nothing"
    assert got == want


def test_anchors_follow_the_rollouts_generation_settings(tmp_path, tiny_model_path):
    # the user's generation_kwargs reach the anchors: a huge EOS bias ends every greedy anchor at once
    trainer = _anchor_run(tmp_path, tiny_model_path, generation_kwargs={"sequence_bias": {(EOS,): 100.0}})
    assert trainer._last_anchor_completions == [[EOS]] * len(trainer._last_anchor_texts)
    # and so does the rollouts' repetition penalty
    trainer = _anchor_run(tmp_path, tiny_model_path, repetition_penalty=50.0)
    want = [_greedy(trainer.model, trainer.prompt_encoder(t).input_ids, 8, EOS, repetition_penalty=50.0)
            for t in trainer._last_anchor_texts]
    plain = [_greedy(trainer.model, trainer.prompt_encoder(t).input_ids, 8, EOS) for t in trainer._last_anchor_texts]
    assert want != plain
    assert trainer._last_anchor_completions == want


def _checkpointing_kwargs(model):
    funcs = {m._gradient_checkpointing_func.keywords.get("use_reentrant")
             for m in model.modules() if getattr(m, "gradient_checkpointing", False)}
    assert funcs, "gradient checkpointing is not enabled on any layer"
    return funcs


def test_embedding_pass_keeps_the_activation_checkpointing_settings(tmp_path, tiny_model_path, recwarn):
    seen = []

    def spy(prompts, **kwargs):  # runs right after the embedding pass, inside training
        seen.append(_checkpointing_kwargs(trainer.model))
        return [0.0] * len(prompts)

    args = config(tmp_path, max_steps=1, activation_checkpointing=True,
                  activation_checkpointing_kwargs={"use_reentrant": True})
    trainer = GRACETrainer(tiny_model_path, reward_funcs=["grace", spy], args=args, train_dataset=sup_rows())
    trainer.train()
    assert seen and all(s == {True} for s in seen), seen
    # the settings' current names start a run without transformers' deprecation warnings
    assert not [str(w.message) for w in recwarn if "`gradient_checkpointing" in str(w.message)]


def test_rollout_stopped_without_eos_is_truncated(tmp_path, tiny_model_path):
    trainer = GRACETrainer(tiny_model_path, args=config(tmp_path), train_dataset=sup_rows())
    assert trainer.args.max_completion_length == 8
    assert trainer._is_truncated([5, 6, 7])  # vLLM's max_model_len stopped it before max_completion_length
    assert trainer._is_truncated([5] * 8)
    assert trainer._is_truncated([])
    assert not trainer._is_truncated([5, 6, EOS])


def test_prompt_column_must_match_the_configured_prompt(tmp_path, tiny_model_path):
    from grace_trl.prompts import build_messages

    data = sup_rows()
    good = data.add_column("prompt", [build_messages(p, "Summarise.") for p in data["positive"]])
    GRACETrainer(tiny_model_path, args=config(tmp_path, system_prompt="Summarise."), train_dataset=good)
    stale = data.add_column("prompt", [build_messages(p) for p in data["positive"]])  # the default system prompt
    with pytest.raises(ValueError, match="row 0, field 'prompt'"):
        GRACETrainer(tiny_model_path, args=config(tmp_path, system_prompt="Summarise."), train_dataset=stale)


def _with_template(src, dst, template):
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(src, dst)
    tok = AutoTokenizer.from_pretrained(dst)
    tok.chat_template = template
    tok.save_pretrained(dst)
    return str(dst)


def test_template_that_trims_content_trains_on_padded_text(tmp_path, tiny_model_path):
    from test_prompts import TRIM_TEMPLATE

    path = _with_template(tiny_model_path, tmp_path / "trim", TRIM_TEMPLATE)
    data = Dataset.from_dict({"text": [" leading space", "trailing newline\n", "  both  ", "plain"]})
    trainer = GRACETrainer(path, args=config(tmp_path, mode="unsupervised"), train_dataset=data)
    rows = next(iter(trainer.get_train_dataloader()))
    out = trainer._generate_and_score_completions(rows)
    assert out["prompt_ids"].shape[0] == 4
    enc = trainer.prompt_encoder("  both  ")
    assert trainer.grace_tokenizer.decode(enc.input_ids[enc.content_start:]).startswith("both<|eot_id|>")


def test_text_the_template_cannot_embed_fails_before_training(tmp_path, tiny_model_path):
    # a template that drops any user message mentioning a URL: such a row has no content to pool
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if 'http' not in m['content'] %}"
                "{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    path = _with_template(tiny_model_path, tmp_path / "drop", template)
    data = sup_rows()
    data = Dataset.from_dict({**data.to_dict(), "negatives": [["n"], ["see http://x.org"], ["n"], ["n"]]})
    with pytest.raises(ValueError, match=r"row 1, field 'negatives\[0\]': the chat template renders this text as"):
        GRACETrainer(path, args=config(tmp_path), train_dataset=data)


def half(completions, **kwargs):
    return [0.5] * len(completions)


def test_samples_record_the_weighted_reward_grpo_trains_on(tmp_path, tiny_model_path):
    args = config(tmp_path, reward_weights=[0.0, 2.0], num_sample_rationales=2)
    trainer = GRACETrainer(tiny_model_path, reward_funcs=["grace", half], args=args, train_dataset=sup_rows())
    trainer.model.train()
    trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    records = [json.loads(line) for line in open(os.path.join(args.output_dir, SAMPLES_FILE))]
    assert len(records) == 2
    assert all(r["reward"] == pytest.approx(1.0) and r["mode"] == "train" for r in records)


@pytest.mark.parametrize("fuse", [True, False])
def test_rollouts_ignore_the_checkpoint_generation_config_fused_or_not(tmp_path, penalised_model_path, fuse):
    # greedy rollouts, so both decodes can be compared token for token with a reference decode
    trainer = _anchor_run(tmp_path, penalised_model_path, fuse_anchor_generation=fuse,
                          generation_kwargs={"do_sample": False})
    out = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    got, want, penalised = [], [], []
    for ids, m, comp, cm in zip(out["prompt_ids"], out["prompt_mask"], out["completion_ids"], out["completion_mask"]):
        prompt = ids[m.bool()].tolist()
        got.append(comp[cm.bool()].tolist())
        want.append(_greedy(trainer.model, prompt, 8, EOS))
        penalised.append(_greedy(trainer.model, prompt, 8, EOS, repetition_penalty=50.0, no_repeat_ngram_size=1))
    assert want != penalised, "the penalty must change greedy decoding, or this test proves nothing"
    assert got == want


def test_time_budget_stops_training_and_a_resumed_run_counts_the_time_already_spent(tmp_path, tiny_model_path):
    from grace_trl.callbacks import TimeBudgetCallback

    data = Dataset.from_dict({"text": [f"sentence {i} about the weather" for i in range(8)]})
    args = config(tmp_path, mode="unsupervised", max_steps=3, save_strategy="steps", save_steps=100,
                  max_train_minutes=1e-6, generation_kwargs=EOS_BIAS)
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=data)
    trainer.train()
    assert trainer.state.global_step == 1  # the first step crossed the budget; training stopped and saved
    state_file = os.path.join(args.output_dir, "checkpoint-1", "trainer_state.json")
    state = json.loads(open(state_file).read())
    assert state["stateful_callbacks"][TimeBudgetCallback.STATE_KEY]["spent_seconds"] > 0
    # as if that first step had taken an hour: a resumed run with a 30-minute budget stops after one more step
    state["stateful_callbacks"][TimeBudgetCallback.STATE_KEY]["spent_seconds"] = 3600.0
    with open(state_file, "w") as f:
        json.dump(state, f)
    args2 = config(tmp_path, mode="unsupervised", max_steps=3, save_strategy="steps", save_steps=100,
                   max_train_minutes=30, generation_kwargs=EOS_BIAS)
    resumed = GRACETrainer(tiny_model_path, args=args2, train_dataset=data)
    resumed.train(resume_from_checkpoint=os.path.join(args.output_dir, "checkpoint-1"))
    assert resumed.state.global_step == 2
    assert os.path.isdir(os.path.join(args.output_dir, "checkpoint-2"))


def test_budget_run_shows_progress_against_the_budget_and_says_why_it_stopped(tmp_path, tiny_model_path, caplog,
                                                                              recwarn):
    import logging

    from transformers.trainer_callback import ProgressCallback

    from grace_trl.callbacks import GRACEProgressCallback

    trainer = GRACETrainer(tiny_model_path, args=config(tmp_path, max_steps=3, max_train_minutes=1e-4),
                           train_dataset=sup_rows())
    bars = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ProgressCallback)]
    assert len(bars) == 1 and isinstance(bars[0], GRACEProgressCallback) and bars[0].minutes == 1e-4
    with caplog.at_level(logging.INFO, logger="grace_trl"):
        trainer.train()
    assert trainer.state.global_step == 1
    assert "training stopped at step 1 of 3 (epoch" in caplog.text
    assert "the max_train_minutes=0.0001 budget was reached" in caplog.text
    assert not [w for w in recwarn if "is_gradient_checkpointing" in str(w.message)]
