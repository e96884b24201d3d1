"""Reliability: bad input named before the model loads, no silent dead or NaN steps, no mixed runs."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch
from datasets import Dataset

from grace_trl import GRACEConfig
from grace_trl.data import DataValidationError, load_grace_dataset, validate_dataset
from grace_trl.rewards import GRACEReward, RolloutEmbeddings, grace_reward_components
from grace_trl.settings import GRACESettings
from grace_trl.trainer import SAMPLES_FILE, GRACETrainer

EOS = 2  # SmolLM2's <|im_end|>
NO_EOS = {"sequence_bias": {(EOS,): -100.0}}  # every rollout runs to max_completion_length
SOME_EOS = {"sequence_bias": {(EOS,): 9.0}}  # a mix of finished and truncated rollouts


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", seed=0,
                num_generations=2, per_device_train_batch_size=4, max_completion_length=6, max_steps=1,
                learning_rate=1e-3, logging_steps=1, save_strategy="no", num_sample_rationales=1)
    base.update(kw)
    return GRACEConfig(**base)


def unsup_rows(n=8):
    return Dataset.from_dict({"text": [f"sentence {i} about the weather" for i in range(n)]})


def sample_steps(output_dir):
    with open(os.path.join(output_dir, SAMPLES_FILE), encoding="utf-8") as f:
        return [json.loads(line)["step"] for line in f]


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("key,value", [
    ("tau", [0.1, 0.2]), ("tau", 0), ("max_steps", 2.5), ("max_completion_length", 0),
    ("embedding_batch_size", 0), ("truncation_penalty", -1.0), ("lambda_consistency", -0.2),
    ("lambda_cross", -0.2), ("num_negatives", 1.5), ("num_sample_rationales", -1),
])
def test_config_rejects_bad_values_naming_the_key(tmp_path, key, value):
    with pytest.raises(ValueError, match=rf"GRACEConfig: {key} must be .*got {value!r}".replace("[", r"\[")):
        config(tmp_path, **{key: value})


def test_fsdp_is_refused_in_one_line(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="GRACE does not support FSDP") as err:
        config(tmp_path, fsdp=True)
    assert "\n" not in str(err.value)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with an FSDP config sets
    with pytest.raises(ValueError, match="GRACE does not support FSDP"):
        config(tmp_path)


def test_fsdp_is_not_offered_by_train_help(capsys):
    from grace_trl.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "fsdp1" not in capsys.readouterr().out


def test_eval_batch_that_splits_a_group_is_refused(tmp_path):
    # two processes with 4 rows each hold 8 rows, a whole group of 8 for TRL, half a group each for GRACE
    with pytest.raises(ValueError, match=r"per_device_eval_batch_size \(4\) must be a multiple of "
                                         r"num_generations_eval \(8\)"):
        config(tmp_path, eval_strategy="steps", per_device_eval_batch_size=4, num_generations_eval=8)
    config(tmp_path, eval_strategy="steps", per_device_eval_batch_size=8, num_generations_eval=8)


def test_evaluator_only_best_model_needs_an_evaluator_metric(tmp_path, tiny_model_path):
    args = config(tmp_path, mode="unsupervised", embedding_evaluator="sts-dev-sample", eval_strategy="steps",
                  save_strategy="steps", load_best_model_at_end=True)  # metric_for_best_model defaults to loss
    with pytest.raises(ValueError, match=r"metric_for_best_model='loss'.*eval_sts_<metric>"):
        GRACETrainer(tiny_model_path, args=args, train_dataset=unsup_rows())
    args = config(tmp_path, mode="unsupervised", embedding_evaluator="sts-dev-sample", eval_strategy="steps",
                  save_strategy="steps", load_best_model_at_end=True, metric_for_best_model="sts_spearman")
    GRACETrainer(tiny_model_path, args=args, train_dataset=unsup_rows())


def test_trl_outside_the_tested_range_fails_in_one_line(monkeypatch):
    import trl

    from grace_trl.checks import UNTESTED_TRL_ENV, check_trl_version

    check_trl_version(trl.__version__, environ={})  # the installed one is the tested one
    for version in ("1.17.0", "1.15.2", "2.0.0.dev0"):
        with pytest.raises(RuntimeError, match=rf"tested with trl 1\.16\.x .*found trl {version}") as err:
            check_trl_version(version, environ={})
        assert "\n" not in str(err.value) and UNTESTED_TRL_ENV in str(err.value)
    check_trl_version("1.17.0", environ={UNTESTED_TRL_ENV: "1"})


class ReshapedTRL:
    """A GRPOTrainer whose _generate_single_turn dropped a positional argument (as happened before)."""

    def _generate_single_turn(self, prompt_ids, images, num_generations):
        ...

    def _generate_and_score_completions(self, inputs):
        ...

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        ...

    def _compute_loss(self, model, inputs):
        ...


def test_changed_trl_internals_fail_in_one_line():
    from trl import GRPOTrainer

    from grace_trl.checks import check_trl_overrides

    check_trl_overrides(GRPOTrainer)
    with pytest.raises(RuntimeError, match=r"ReshapedTRL\._generate_single_turn takes .*install a tested trl"):
        check_trl_overrides(ReshapedTRL)


def test_yaml_config_errors_name_the_key_before_the_model_loads(tmp_path):
    from grace_trl.commands.train import parse_args

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'o'}\nuse_cpu: true\nbf16: false\ntau: [0.1, 0.2]\n")
    with pytest.raises(ValueError, match="tau must be a number"):
        parse_args(["--config", str(recipe)])


# ---------------------------------------------------------------- data files
@pytest.mark.parametrize("name,content,where", [
    ("x.csv", b"sent0,sent1,hard_neg\na,b,c\nd,caf\xe9,f\n", "line 3"),
    ("x.jsonl", b'{"sent0": "a", "sent1": "b", "hard_neg": "c"}\n{"sent0": "\xff"}\n', "line 2"),
    ("x.txt", b"fine\nalso fine\n\x80bad\n", "line 3"),
])
def test_non_utf8_bytes_name_file_and_line(tmp_path, name, content, where):
    path = tmp_path / name
    path.write_bytes(content)
    mode = "unsupervised" if name.endswith(".txt") else "supervised"
    with pytest.raises(DataValidationError) as err:
        load_grace_dataset(str(path), mode=mode)
    msg = str(err.value)
    assert str(path) in msg and where in msg and "UTF-8" in msg and "\n" not in msg


def test_lone_surrogate_names_file_row_and_field(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "broken \\ud800 text"}\n')
    with pytest.raises(DataValidationError, match=r"(?s)x\.jsonl.*row 1, field 'text': invalid Unicode") as err:
        load_grace_dataset(str(path), mode="unsupervised")
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name,content,expected", [
    ("e.jsonl", "", "the file is empty"), ("e.jsonl", "\n\n", "the file is empty"),
    ("e.csv", "", "the file is empty"), ("h.csv", "sent0,sent1\n", "has a header (sent0, sent1) but no rows"),
    ("e.txt", "\n", "the file is empty"),
])
def test_empty_files_say_so(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataValidationError, match=r"^" + str(path).replace(".", r"\.") + ".*" + expected
                       .replace("(", r"\(").replace(")", r"\)")):
        load_grace_dataset(str(path), mode="unsupervised" if name.endswith(".txt") else "supervised")


def test_column_mapping_typo_lists_the_real_columns_once(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("sent0,sent1,hard_neg\n" + "a,b,c\n" * 5)
    with pytest.raises(DataValidationError) as err:
        load_grace_dataset(str(path), column_mapping="query=snet0,positive=sent1,negatives=hard_neg")
    msg = str(err.value)
    assert "query='snet0'" in msg and "['sent0', 'sent1', 'hard_neg']" in msg and msg.count("snet0") == 1


def test_negative_count_message_names_its_source(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"query": "a", "positive": "b", "negatives": ["c", "d"]}) + "\n")
    with pytest.raises(DataValidationError, match=r"row 0, field 'negatives': expected 1 negative\(s\) "
                                                  r"\(num_negatives=1\), got 2"):
        load_grace_dataset(str(path), num_negatives=1)
    path.write_text("\n".join(json.dumps({"query": "a", "positive": "b", "negatives": n})
                              for n in (["c"], ["c", "d"])) + "\n")
    expected = r"row 1, field 'negatives': expected 1 negative\(s\) \(like row 0\)"
    with pytest.raises(DataValidationError, match=expected):
        load_grace_dataset(str(path))


def test_duplicate_rows_warn_with_row_numbers(caplog):
    data = Dataset.from_dict({"query": ["a", "b", "a", "c", "b"], "positive": ["p", "q", "p", "r", "q"],
                              "negatives": [["n"]] * 5})
    with caplog.at_level(logging.WARNING, logger="grace_trl"):
        validate_dataset(data, "supervised", 1)
    msg = caplog.text
    assert "2 duplicate row(s)" in msg and "row 2 repeats row 0" in msg and "row 4 repeats row 1" in msg
    caplog.clear()
    validate_dataset(Dataset.from_dict({"query": ["a", "a"], "positive": ["p", "other"], "negatives": [["n"]] * 2}),
                     "supervised", 1)
    assert "duplicate" not in caplog.text  # one query with two positives is legitimate


# ---------------------------------------------------------------- non-finite embeddings
def _batch(policy, anchors, negatives=None, truncated=None, G=2, mode="supervised"):
    n = policy.shape[0]
    return RolloutEmbeddings(policy=policy, anchors=anchors, negatives=negatives,
                             truncated=torch.zeros(n, dtype=torch.bool) if truncated is None else truncated,
                             completion_lengths=torch.ones(n), num_generations=G, mode=mode)


def _unit(*shape):
    return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)


@pytest.mark.parametrize("variant", ["effective", "paper"])
def test_nan_anchor_drops_its_group_and_leaves_the_others_exact(variant):
    torch.manual_seed(0)
    p, a, n = _unit(6, 8), _unit(3, 8), _unit(3, 1, 8)
    clean = grace_reward_components(_batch(p[:4], a[:2], n[:2]), variant=variant)["reward"]
    a_bad = torch.cat([a[:2], torch.full((1, 8), float("nan"))])
    comps = grace_reward_components(_batch(p, a_bad, n), variant=variant)
    assert torch.isfinite(comps["reward"]).all()
    assert comps["dropped"].tolist() == [False] * 4 + [True] * 2
    assert torch.allclose(comps["reward"][:4], clean, atol=1e-6)  # the NaN group is out of every term
    assert comps["reward"][4] == comps["reward"][5]  # constant within the group: zero advantage


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_nan_rollout_gets_zero_advantage_and_others_keep_their_terms(mode):
    torch.manual_seed(1)
    p, a = _unit(6, 8), _unit(2, 8)
    p[1] = float("nan")
    comps = grace_reward_components(_batch(p, a, None, G=3, mode=mode), mode=mode)
    r = comps["reward"]
    assert torch.isfinite(r).all() and comps["dropped"].tolist() == [False, True, False, False, False, False]
    # rollout 0's consistency is its cosine with rollout 2 alone (rollout 1 is absent, not a zero vector)
    assert torch.isclose(comps["consistency"][0], p[0] @ p[2], atol=1e-6)
    assert torch.isclose(r[1], (r[0] + r[2]) / 2, atol=1e-6)  # the group-mean baseline is unchanged


def test_reward_names_nonfinite_rows_and_counts_them(caplog):
    p, a = _unit(4, 8), _unit(2, 8)
    p[3] = float("inf")
    logged = {}
    reward = GRACEReward()
    with caplog.at_level(logging.WARNING, logger="grace_trl"):
        out = reward(["x"] * 4, ["y"] * 4, grace_embeddings=[_batch(p, a)], log_metric=logged.__setitem__)
    assert all(torch.isfinite(torch.tensor(out)))
    assert "non-finite" in caplog.text and "rollout rows [3]" in caplog.text
    assert logged["grace/dropped_rollouts"] == 1.0 and reward.num_dropped == 1


class NaNRowTrainer(GRACETrainer):
    """Turns the second pooled vector of every batch NaN, as a broken forward pass would."""

    def compute_embeddings(self, model, sequences, spans):
        vectors = super().compute_embeddings(model, sequences, spans).clone()
        vectors[1] = float("nan")
        return vectors


def nan_reward(completions, **kwargs):
    return [float("nan")] * len(completions)


def test_nan_embedding_in_training_keeps_rewards_finite_and_samples_json(tmp_path, tiny_model_path, caplog):
    args = config(tmp_path, mode="unsupervised", generation_kwargs=SOME_EOS, reward_weights=[1.0, 1.0],
                  num_sample_rationales=2)
    trainer = NaNRowTrainer(tiny_model_path, reward_funcs=["grace", nan_reward], args=args, train_dataset=unsup_rows())
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert "All reward functions returned None" not in caplog.text
    assert "rollout rows [1]" in caplog.text
    log = [h for h in trainer.state.log_history if "loss" in h][0]
    assert torch.isfinite(torch.tensor(float(log["loss"]))) and log["grace/dropped_rollouts"] >= 1
    assert torch.isfinite(torch.tensor(float(log["rewards/grace/mean"])))

    def no_nan(token):
        raise AssertionError(f"bare {token} in {SAMPLES_FILE}")

    with open(os.path.join(args.output_dir, SAMPLES_FILE), encoding="utf-8") as f:
        records = [json.loads(line, parse_constant=no_nan) for line in f]
    # as GRPO's reward: the NaN (None) term is left out of the weighted sum, GRACE's finite reward remains
    assert records and all(r["reward"] is not None for r in records)


# ---------------------------------------------------------------- steps that cannot learn
def test_fully_truncated_steps_warn_count_and_hint(tmp_path, tiny_model_path, caplog):
    args = config(tmp_path, mode="unsupervised", max_completion_length=3, max_steps=3, generation_kwargs=NO_EOS)
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=unsup_rows())
    with caplog.at_level(logging.WARNING, logger="grace_trl"):
        trainer.train()
    text = caplog.text
    assert text.count("every rollout hit max_completion_length=3") == 3
    assert "3 steps in a row learned nothing" in text and "Raise max_completion_length (now 3)" in text
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(h["grace/all_truncated"] == 1.0 and h["grace/zero_advantage"] == 1.0 for h in logs)


def test_learning_steps_do_not_warn(tmp_path, tiny_model_path, caplog):
    args = config(tmp_path, mode="unsupervised", max_completion_length=8, generation_kwargs=SOME_EOS)
    trainer = GRACETrainer(tiny_model_path, args=args, train_dataset=unsup_rows())
    with caplog.at_level(logging.WARNING, logger="grace_trl"):
        trainer.train()
    log = [h for h in trainer.state.log_history if "loss" in h][0]
    assert log["grace/zero_advantage"] == 0.0 and "learns nothing" not in caplog.text


# ---------------------------------------------------------------- texts vs context
def test_text_longer_than_the_context_is_named_before_training(tmp_path, tiny_model_path):
    data = Dataset.from_dict({"query": ["q0", "q1", "q2"],
                              "positive": ["short", "word " * 1100, "short too"],
                              "negatives": [["n"], ["n"], ["also " * 1100]]})
    with pytest.raises(ValueError) as err:
        GRACETrainer(tiny_model_path, args=config(tmp_path), train_dataset=data)
    msg = str(err.value)
    assert msg.startswith("train_dataset: 2 text(s) do not fit the model's context of 1024 tokens")
    assert "row 1, field 'positive'" in msg and "row 2, field 'negatives[0]'" in msg


# ---------------------------------------------------------------- runs that mix
def test_resume_last_skips_incomplete_checkpoint_and_each_step_is_sampled_once(tmp_path, tiny_model_path, caplog):
    kw = dict(mode="unsupervised", max_steps=3, save_strategy="steps", save_steps=1, generation_kwargs=SOME_EOS)
    first = GRACETrainer(tiny_model_path, args=config(tmp_path, **kw), train_dataset=unsup_rows())
    first.train()
    out = first.args.output_dir
    assert sample_steps(out) == [0, 1, 2]
    # a kill during the save of checkpoint-3: the weights never left their temporary file
    ckpt3 = os.path.join(out, "checkpoint-3")
    os.remove(os.path.join(ckpt3, "trainer_state.json"))
    os.replace(os.path.join(ckpt3, "model.safetensors"), os.path.join(ckpt3, ".tmpAbC123"))

    resumed = GRACETrainer(tiny_model_path, args=config(tmp_path, **kw), train_dataset=unsup_rows())
    with caplog.at_level(logging.WARNING, logger="grace_trl"):
        resumed.train(resume_from_checkpoint="last")
    assert f"skipping incomplete checkpoint {ckpt3}" in caplog.text
    assert resumed.state.global_step == 3
    assert sample_steps(out) == [0, 1, 2]  # step 2 was redone: its old record went, the new one came
    assert not os.path.exists(os.path.join(ckpt3, ".tmpAbC123"))
    assert os.path.isfile(os.path.join(ckpt3, "trainer_state.json"))  # re-saved by the resumed run


def test_resume_last_without_a_complete_checkpoint_names_the_folder(tmp_path):
    from grace_trl.checks import resolve_resume_checkpoint

    os.makedirs(tmp_path / "checkpoint-4")
    with pytest.raises(ValueError, match=r"no complete checkpoint in .*checkpoint-4: no trainer_state.json"):
        resolve_resume_checkpoint(str(tmp_path), "last")


def test_fresh_run_into_a_used_output_dir_refuses_unless_overwrite(tmp_path, tiny_model_path):
    kw = dict(mode="unsupervised", generation_kwargs=SOME_EOS, save_strategy="steps", save_steps=1)
    GRACETrainer(tiny_model_path, args=config(tmp_path, **kw), train_dataset=unsup_rows()).train()
    out = str(tmp_path / "out")
    assert sample_steps(out) == [0]
    again = GRACETrainer(tiny_model_path, args=config(tmp_path, **kw), train_dataset=unsup_rows())
    with pytest.raises(ValueError, match=rf"output_dir {out} already holds a run .*overwrite_output_dir"):
        again.train()
    assert sample_steps(out) == [0]
    fresh = GRACETrainer(tiny_model_path, args=config(tmp_path, overwrite_output_dir=True, **kw),
                         train_dataset=unsup_rows())
    fresh.train()
    assert sample_steps(out) == [0]  # the old run's record is gone, not followed by the new one


def test_train_command_refuses_a_used_output_dir_before_loading_anything(tmp_path):
    from grace_trl.commands.train import main

    out = tmp_path / "out"
    out.mkdir()
    (out / SAMPLES_FILE).write_text('{"step": 0}\n')
    # the model path does not exist: reaching the model would fail differently
    with pytest.raises(ValueError, match="already holds a run"):
        main(["--output_dir", str(out), "--model_name_or_path", str(tmp_path / "no-model"), "--use_cpu", "true",
              "--bf16", "false", "--report_to", "none", "--num_generations", "2",
              "--per_device_train_batch_size", "2"])


# ---------------------------------------------------------------- encoder and model paths
@pytest.fixture(scope="module")
def encoder(tiny_model_path):
    from grace_trl.encoder import GRACEEncoder

    return GRACEEncoder.from_pretrained(tiny_model_path, device="cpu")


def test_encode_rejects_bad_arguments(encoder):
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1.*got 0"):
        encoder.encode(["a text"], max_new_tokens=0, show_progress_bar=False)
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        encoder.encode(["a text", ""], max_new_tokens=2, show_progress_bar=False)
    with pytest.raises(TypeError, match="texts must be a str or a sequence of str, got NoneType"):
        encoder.encode(None)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        encoder.encode(["a text"], batch_size=0, max_new_tokens=2, show_progress_bar=False)


def test_checkpoint_without_grace_config_warns(tiny_model_path, tmp_path, caplog):
    from grace_trl.encoder import GRACEEncoder

    ckpt = tmp_path / "checkpoint-5"
    shutil.copytree(tiny_model_path, ckpt)
    (ckpt / "trainer_state.json").write_text('{"global_step": 5}')
    with caplog.at_level(logging.WARNING, logger="grace_trl"):
        GRACEEncoder.from_pretrained(str(ckpt), device="cpu")
    assert f"{ckpt} was saved by a training run but has no grace_config.json" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="grace_trl"):
        GRACEEncoder.from_pretrained(tiny_model_path, device="cpu")  # a base model: nothing to warn about
    assert "grace_config.json" not in caplog.text


def test_bad_model_paths_are_named(tmp_path, tiny_model_path):
    from grace_trl.encoder import GRACEEncoder

    missing = tmp_path / "runs" / "missing-model"
    with pytest.raises(FileNotFoundError, match=f"model path {missing} does not exist"):
        GRACEEncoder.from_pretrained(str(missing), device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"model folder {empty} has no config.json .*it is empty"):
        GRACEEncoder.from_pretrained(str(empty), device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GRACETrainer(str(missing), args=config(tmp_path), train_dataset=unsup_rows())
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model_path, corrupt)
    (corrupt / "grace_config.json").write_text('{"pooling": "mean", ')
    with pytest.raises(ValueError, match=f"{corrupt / 'grace_config.json'}: not valid JSON"):
        GRACEEncoder.from_pretrained(str(corrupt), device="cpu")
    (corrupt / "grace_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        GRACESettings.load(str(corrupt))
