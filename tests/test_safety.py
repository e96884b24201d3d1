"""Issue 18: no data loss, no half-written model that looks whole, no silent mix of runs or settings.

Each fault test checks the state left afterwards; each bad-input test checks that the message names the
file, row or key.
"""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from grace_trl.settings import SETTINGS_FILE, GRACESettings


# ---------------------------------------------------------------- export never deletes its own source
@pytest.fixture()
def run_dir(tmp_path, tiny_model_path):
    """A training folder holding checkpoint-2 (a full model) and a rationale sample."""
    out = tmp_path / "out"
    shutil.copytree(tiny_model_path, out / "checkpoint-2")
    GRACESettings().save(str(out / "checkpoint-2"))
    (out / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (out / "rationale_samples.jsonl").write_text('{"step": 0}\n')
    return out


@pytest.mark.parametrize("target", ["out", "out/checkpoint-2/sub", "."])
def test_export_refuses_an_output_that_holds_or_lies_in_the_run(run_dir, target):
    from grace_trl.export import export_checkpoint

    output = run_dir.parent / target if target != "." else run_dir.parent
    with pytest.raises(ValueError, match="is, contains or lies inside the checkpoint or its training folder"):
        export_checkpoint(str(run_dir / "checkpoint-2"), str(output), overwrite=True)
    assert (run_dir / "checkpoint-2" / "model.safetensors").is_file()
    assert (run_dir / "rationale_samples.jsonl").is_file()


def test_export_failing_midway_keeps_the_old_output(run_dir, tmp_path):
    from grace_trl.export import export_checkpoint

    output = tmp_path / "exported"
    output.mkdir()
    (output / "old.txt").write_text("the previous export")
    (run_dir / "checkpoint-2" / SETTINGS_FILE).write_text('{"pooling": "mean", ')  # invalid JSON: fails late
    with pytest.raises(ValueError, match="not valid JSON"):
        export_checkpoint(str(run_dir / "checkpoint-2"), str(output), overwrite=True)
    assert (output / "old.txt").read_text() == "the previous export"
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".export-tmp")]  # no staging folder left


def test_export_overwrite_replaces_the_folder_when_complete(run_dir, tmp_path):
    from grace_trl.export import export_checkpoint

    output = tmp_path / "exported"
    output.mkdir()
    (output / "old.txt").write_text("the previous export")
    export_checkpoint(str(run_dir / "checkpoint-2"), str(output), overwrite=True)
    assert not (output / "old.txt").exists() and (output / "model.safetensors").is_file()
    assert (output / SETTINGS_FILE).is_file()


# ---------------------------------------------------------------- files honour the umask
def test_atomic_write_honours_the_umask(tmp_path):
    from grace_trl.files import atomic_write

    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "shared.json") as f:
            f.write("{}")
        GRACESettings().save(str(tmp_path))
        os.umask(0o077)
        with atomic_write(tmp_path / "private.json") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "shared.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / SETTINGS_FILE).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "private.json").st_mode) == 0o600
    assert json.loads((tmp_path / "shared.json").read_text()) == {}


# ---------------------------------------------------------------- rationale cache: content, not path
def test_fingerprint_follows_the_weights_not_the_folder(tmp_path, tiny_model_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grace_trl.cache import model_fingerprint

    moved = tmp_path / "moved-copy"
    shutil.copytree(tiny_model_path, moved)
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    fp = model_fingerprint(model, tok)
    assert model_fingerprint(AutoModelForCausalLM.from_pretrained(moved), AutoTokenizer.from_pretrained(moved)) == fp
    weight = model.model.layers[1].self_attn.k_proj.weight
    middle = weight.numel() // 2  # neither among the first nor the last 512 values a sampled hash would read
    with torch.no_grad():
        weight.view(-1)[middle] += 1e-3
    assert model_fingerprint(model, tok) != fp


def _cached_encoder(tiny_model_path, cache_dir):
    from grace_trl.encoder import GRACEEncoder

    return GRACEEncoder.from_pretrained(tiny_model_path, device="cpu", cache_dir=str(cache_dir))


def test_cache_entry_edited_with_a_valid_checksum_is_regenerated(tmp_path, tiny_model_path, caplog):
    import logging

    from grace_trl.cache import _payload_checksum

    texts = ["A man is playing a guitar.", "The weather is cold today."]
    enc = _cached_encoder(tiny_model_path, tmp_path / "cache")
    first = enc.generate_rationales(texts, max_new_tokens=4, show_progress_bar=False)
    entries = sorted((tmp_path / "cache").glob("??/*.json"))
    assert len(entries) == 2
    for path in entries:  # a forged entry: new text, checksum recomputed
        entry = json.loads(path.read_text())
        entry["payload"]["text"] = "forged rationale"
        entry["checksum"] = _payload_checksum(entry["payload"])
        path.write_text(json.dumps(entry))
    again = _cached_encoder(tiny_model_path, tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="grace_trl"):
        second = again.generate_rationales(texts, max_new_tokens=4, show_progress_bar=False)
    assert [r.text for r in second] == [r.text for r in first] and not any(r.cached for r in second)
    assert "its text is not the decoding of its token ids" in caplog.text and again.cache.recovered == 2


def test_cache_entry_replaced_by_a_folder_is_a_miss(tmp_path, tiny_model_path):
    texts = ["A man is playing a guitar."]
    enc = _cached_encoder(tiny_model_path, tmp_path / "cache")
    expected = enc.generate_rationales(texts, max_new_tokens=4, show_progress_bar=False)[0].text
    (entry,) = (tmp_path / "cache").glob("??/*.json")
    entry.unlink()
    entry.mkdir()
    again = _cached_encoder(tiny_model_path, tmp_path / "cache")
    got = again.generate_rationales(texts, max_new_tokens=4, show_progress_bar=False)[0]
    assert got.text == expected and not got.cached and again.cache.misses == 1


# ---------------------------------------------------------------- data and recipes that mix silently
def test_csv_row_with_an_unquoted_comma_names_file_and_line(tmp_path):
    from grace_trl.data import DataValidationError, load_grace_dataset

    path = tmp_path / "pairs.csv"
    path.write_text('query,positive,negatives\n"a q","a p","a n"\nA man, a plan,a canal,panama\n')
    with pytest.raises(DataValidationError, match=rf"{path}, line 3: 4 field\(s\) where the header has 3; "
                                                  "a field holding a comma must be quoted"):
        load_grace_dataset(str(path))
    short = tmp_path / "short.tsv"
    short.write_text("query\tpositive\tnegatives\nq\tp\n")
    with pytest.raises(DataValidationError, match=rf"{short}, line 2: 2 field\(s\) where the header has 3"):
        load_grace_dataset(str(short))


def test_csv_duplicate_header_names_the_column(tmp_path):
    from grace_trl.data import DataValidationError, load_grace_dataset

    path = tmp_path / "dup.csv"
    path.write_text("query,positive,positive,negatives\nq,p1,p2,n\n")
    with pytest.raises(DataValidationError, match=rf"{path}, line 1: column\(s\) \['positive'\] appear more than "):
        load_grace_dataset(str(path))


def test_recipe_key_given_twice_names_both_lines(tmp_path):
    from grace_trl.cli_args import UsageError
    from grace_trl.commands.train import parse_args

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 1.0e-6\nmax_steps: 2\nlearning_rate: 1.0e-3\n")
    with pytest.raises(UsageError, match=rf"{recipe}, line 3: key 'learning_rate' is given twice \(first on line 1\)"):
        parse_args(["--config", str(recipe)])


@pytest.mark.parametrize("kind", ["folder", "latin1", "twice", "missing"])
def test_bad_config_argument_is_one_line(tmp_path, capsys, kind):
    from grace_trl.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("max_steps: 2\n")
    if kind == "folder":
        argv, expected = ["--config", str(tmp_path)], "is a folder"
    elif kind == "latin1":
        recipe.write_bytes("system_prompt: caf\xe9\n".encode("latin-1"))
        argv, expected = ["--config", str(recipe)], f"{recipe}: not UTF-8 text"
    elif kind == "twice":
        argv, expected = ["--config", str(recipe), "--config", str(recipe)], "--config given 2 times"
    else:
        argv, expected = ["--config", str(tmp_path / "nope.yaml")], "does not exist"
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err


# ---------------------------------------------------------------- saves, resumes and locks
def _args(output_dir, **kw):
    from grace_trl import GRACEConfig

    base = dict(output_dir=str(output_dir), use_cpu=True, bf16=False, report_to="none", seed=0, mode="unsupervised",
                num_generations=2, per_device_train_batch_size=4, max_completion_length=4, max_steps=2,
                learning_rate=1e-3, logging_steps=1, save_strategy="steps", save_steps=1, num_sample_rationales=1,
                generation_kwargs={"sequence_bias": {(2,): 9.0}})
    base.update(kw)
    return GRACEConfig(**base)


def _rows(n=8, word="weather"):
    from datasets import Dataset

    return Dataset.from_dict({"text": [f"sentence {i} about the {word}" for i in range(n)]})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_path):
    """A two-step run with checkpoint-1, checkpoint-2 and a completed final save."""
    from grace_trl.trainer import GRACETrainer

    out = tmp_path_factory.mktemp("finished") / "out"
    trainer = GRACETrainer(tiny_model_path, args=_args(out), train_dataset=_rows())
    trainer.train()
    trainer.save_model(str(out))
    return out


def _copy_run(finished_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    return out


def test_final_save_writes_its_marker_last_and_a_cut_save_is_refused(finished_run, tmp_path, tiny_model_path):
    from grace_trl.checks import SAVE_MARKER, RunStateError
    from grace_trl.encoder import GRACEEncoder
    from grace_trl.export import export_checkpoint
    from grace_trl.trainer import GRACETrainer

    out = _copy_run(finished_run, tmp_path)
    marker = json.loads((out / SAVE_MARKER).read_text())
    assert marker["global_step"] == 2
    assert {"model.safetensors", SETTINGS_FILE, "modules.json", "training_args.bin"} <= set(marker["files"])
    GRACEEncoder.from_pretrained(str(out), device="cpu")  # complete: loads
    # a second save that fails after the weights (grace_config.json cannot be written) leaves no marker
    trainer = GRACETrainer(tiny_model_path, args=_args(out, overwrite_output_dir=True), train_dataset=_rows())
    (out / SETTINGS_FILE).unlink()
    (out / SETTINGS_FILE).mkdir()
    with pytest.raises(OSError):
        trainer.save_model(str(out))
    assert not (out / SAVE_MARKER).exists()
    with pytest.raises(RunStateError, match=rf"{out} was written by a training run whose save did not finish .*"
                                            rf"no {SAVE_MARKER}.*resume the run .*or load {out / 'checkpoint-2'}"):
        GRACEEncoder.from_pretrained(str(out), device="cpu")
    with pytest.raises(RunStateError, match="whose save did not finish"):
        export_checkpoint(str(out), str(tmp_path / "exported"))
    GRACEEncoder.from_pretrained(str(out / "checkpoint-2"), device="cpu")  # its checkpoints are whole


def test_overwrite_removes_the_old_model_before_training(finished_run, tmp_path, tiny_model_path):
    from grace_trl.checks import SAVE_MARKER, RunStateError
    from grace_trl.encoder import GRACEEncoder
    from grace_trl.trainer import GRACETrainer

    out = _copy_run(finished_run, tmp_path)
    trainer = GRACETrainer(tiny_model_path, args=_args(out, overwrite_output_dir=True, max_steps=1),
                           train_dataset=_rows())
    trainer.train()  # then "killed" before its final save
    for name in ("model.safetensors", SAVE_MARKER, "modules.json", SETTINGS_FILE):  # README.md: the new run's card
        assert not (out / name).exists(), name
    with pytest.raises(RunStateError, match="whose save did not finish"):
        GRACEEncoder.from_pretrained(str(out), device="cpu")


def test_resume_at_max_steps_trains_nothing_more(finished_run, tmp_path, tiny_model_path):
    import torch
    from safetensors.torch import load_file

    from grace_trl.trainer import GRACETrainer

    out = _copy_run(finished_run, tmp_path)
    samples_before = (out / "rationale_samples.jsonl").read_text()
    trainer = GRACETrainer(tiny_model_path, args=_args(out), train_dataset=_rows())
    trainer.train(resume_from_checkpoint="last")
    assert trainer.state.global_step == 2
    assert (out / "rationale_samples.jsonl").read_text() == samples_before
    saved = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    for name, value in trainer.model.state_dict().items():
        if name in saved:
            torch.testing.assert_close(value, saved[name], rtol=0, atol=0)


def test_max_steps_zero_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"max_steps must be an integer >= 1 \(or -1 for num_train_epochs\), got 0"):
        _args(tmp_path / "out", max_steps=0)


def test_resume_refuses_a_changed_embedding_or_data_and_warns_on_optimisation(finished_run, tmp_path,
                                                                             tiny_model_path, caplog):
    import logging

    from grace_trl.checks import RunStateError
    from grace_trl.trainer import GRACETrainer

    out = _copy_run(finished_run, tmp_path)
    ckpt = str(out / "checkpoint-1")
    changed = GRACETrainer(tiny_model_path, args=_args(out, pooling="last"), train_dataset=_rows())
    with pytest.raises(RunStateError, match=r"checkpoint-1: .*pooling: 'mean' -> 'last'"):
        changed.train(resume_from_checkpoint=ckpt)
    other_data = GRACETrainer(tiny_model_path, args=_args(out), train_dataset=_rows(word="sea"))
    with pytest.raises(RunStateError, match="the training data differs"):
        other_data.train(resume_from_checkpoint=ckpt)
    faster = GRACETrainer(tiny_model_path, args=_args(out, learning_rate=5e-3), train_dataset=_rows())
    with caplog.at_level(logging.WARNING, logger="grace_trl"):
        faster.train(resume_from_checkpoint=ckpt)
    assert "changed optimisation settings (learning_rate: 0.001 -> 0.005)" in caplog.text
    assert faster.state.global_step == 2


def test_a_second_run_into_a_locked_output_dir_is_refused_naming_the_holder(tmp_path, tiny_model_path):
    import subprocess
    import sys
    import time

    from grace_trl.checks import RunStateError
    from grace_trl.trainer import GRACETrainer

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from grace_trl.checks import OutputDirLock; OutputDirLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(60)"), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        trainer = GRACETrainer(tiny_model_path, args=_args(out, max_steps=1), train_dataset=_rows())
        with pytest.raises(RunStateError, match=rf"output_dir {out} is in use by another run \(pid {holder.pid} on "):
            trainer.train()
        assert not (out / "rationale_samples.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    trainer.train()  # the holder died: its lock went with it
    assert trainer.state.global_step == 1


# ---------------------------------------------------------------- security: loading and publishing
@pytest.fixture()
def st_folder(tmp_path, tiny_model_path):
    from grace_trl.st_module import write_sentence_transformers_files

    folder = tmp_path / "grace-st"
    shutil.copytree(tiny_model_path, folder)
    GRACESettings().save(str(folder))
    write_sentence_transformers_files(str(folder))
    return folder


def test_load_sentence_transformer_embeds_as_grace_without_remote_code(st_folder):
    import numpy as np

    from grace_trl import load_sentence_transformer
    from grace_trl.encoder import GRACEEncoder

    texts = ["A man is playing a guitar.", "Someone plays an instrument."]
    st = load_sentence_transformer(str(st_folder), device="cpu")
    expected = GRACEEncoder.from_pretrained(str(st_folder), device="cpu").encode(texts, use_rationale=False,
                                                                                 show_progress_bar=False)
    np.testing.assert_allclose(st.encode(texts), expected, atol=1e-5)


def test_load_sentence_transformer_refuses_a_module_of_the_repo(st_folder, tmp_path):
    from grace_trl import load_sentence_transformer

    ran = tmp_path / "ran"
    (st_folder / "evil_module.py").write_text(f"open({str(ran)!r}, 'w').write('pwned')\n"
                                              "from grace_trl.st_module import GRACETransformer as Evil\n")
    modules = json.loads((st_folder / "modules.json").read_text())
    modules[0]["type"] = "evil_module.Evil"
    (st_folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match=r"modules.json: module 0 has type 'evil_module.Evil'; only "
                                         r"grace_trl.st_module.GRACETransformer and sentence_transformers"):
        load_sentence_transformer(str(st_folder), device="cpu")
    assert not ran.exists()


@pytest.mark.parametrize("repo_id", ['me/x"\nimport os; os.system("id")  #', "a/b/c", "org/", "x" * 97])
def test_push_refuses_an_invalid_repo_id_in_one_line(tmp_path, tiny_model_path, capsys, repo_id):
    from grace_trl.cli import main

    assert main(["push", "--checkpoint", tiny_model_path, "--repo-id", repo_id, "--dry-run",
                 str(tmp_path / "dry")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a valid Hub model id" in err
    assert not (tmp_path / "dry").exists()


def test_card_code_quotes_the_model_id():
    import ast
    import re

    from grace_trl.model_card import build_model_card

    model_id = 'runs/it\'s "mine"\\\nimport os'
    card = str(build_model_card(model_id, GRACESettings()))
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    assert len(blocks) == 2
    for block in blocks:
        calls = [n for n in ast.walk(ast.parse(block)) if isinstance(n, ast.Call) and n.args
                 and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str)]
        assert [c.args[0].value for c in calls][:1] == [model_id]
        assert "import os" not in [ast.unparse(n) for n in ast.parse(block).body]
    assert "load_sentence_transformer(" in card and "trust_remote_code=True)" not in "".join(blocks)


# ---------------------------------------------------------------- the encoder checks what training checks
@pytest.mark.parametrize("key,value,expected", [
    ("max_new_tokens", 1e8, "max_new_tokens must be an integer from 1 to"),
    ("system_prompt", 5, "system_prompt must be a string or null, got 5 (int)"),
    ("pooling", "cls", "pooling must be one of ['mean', 'rationale', 'last'], got 'cls'"),
    ("chat_template_kwargs", ["enable_thinking"], "chat_template_kwargs must be an object"),
])
def test_bad_grace_config_values_name_file_and_key(tmp_path, tiny_model_path, key, value, expected):
    from grace_trl.encoder import GRACEEncoder

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path, folder)
    (folder / SETTINGS_FILE).write_text(json.dumps({**vars(GRACESettings()), key: value}))
    with pytest.raises(ValueError, match=rf"{folder / SETTINGS_FILE}: " + expected.replace("[", r"\[").replace(
            "]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        GRACEEncoder.from_pretrained(str(folder), device="cpu")


def test_max_new_tokens_beyond_the_context_is_refused_at_load(tmp_path, tiny_model_path):
    from grace_trl.encoder import GRACEEncoder

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path, folder)
    GRACESettings(max_new_tokens=5000).save(str(folder))
    with pytest.raises(ValueError, match="max_new_tokens=5000 leaves no room for a text in the model's context of 1024"
                                         " tokens"):
        GRACEEncoder.from_pretrained(str(folder), device="cpu")


@pytest.fixture(scope="module")
def tiny_encoder(tiny_model_path):
    from grace_trl.encoder import GRACEEncoder

    return GRACEEncoder.from_pretrained(tiny_model_path, device="cpu")


def test_text_beyond_the_context_is_named_before_generating(tiny_encoder):
    with pytest.raises(ValueError, match=r"1 text\(s\) do not fit the model's context of 1024 tokens with "
                                         r"max_new_tokens=8 .*texts\[1\]: \d+ tokens"):
        tiny_encoder.encode(["short", "word " * 3000], max_new_tokens=8, show_progress_bar=False)


def test_lone_surrogate_names_the_text(tiny_encoder):
    with pytest.raises(ValueError, match=r"texts\[0\]: invalid Unicode at character 3 \('\\ud800' is a lone "):
        tiny_encoder.encode(["abc\ud800def"], max_new_tokens=2, show_progress_bar=False)


def test_a_tokenizer_of_another_model_is_refused(tmp_path, tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from grace_trl.encoder import GRACEEncoder

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    small = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64,
                                                         num_hidden_layers=1, num_attention_heads=4,
                                                         num_key_value_heads=2, eos_token_id=2))
    with pytest.raises(ValueError, match=rf"the tokenizer has {len(tok)} tokens but the model's embedding only 1000"):
        GRACEEncoder(small, tok, name_or_path="mixed")
    big = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=len(tok) + 100_000, hidden_size=32,
                                                       intermediate_size=64, num_hidden_layers=1,
                                                       num_attention_heads=4, num_key_value_heads=2,
                                                       eos_token_id=len(tok) + 99_000))
    with pytest.raises(ValueError, match=rf"EOS token id {len(tok) + 99_000} is outside the tokenizer's"):
        GRACEEncoder(big, tok, name_or_path="mixed")


# ---------------------------------------------------------------- one line instead of a traceback
def _train_cli(argv):
    from grace_trl.cli import main

    return main(["train", "--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--num_generations", "2",
                 "--per_device_train_batch_size", "2", *argv])


@pytest.mark.parametrize("case", ["used", "missing_resume", "offline_hub", "parquet", "empty_output_dir",
                                  "max_train_samples", "read_only"])
def test_cli_input_errors_are_one_line(tmp_path, capsys, case):
    out = tmp_path / "out"
    no_model = str(tmp_path / "no-model")  # reaching the model would fail differently
    argv = ["--output_dir", str(out), "--model_name_or_path", no_model]
    if case == "used":
        out.mkdir()
        (out / "rationale_samples.jsonl").write_text('{"step": 0}\n')
        expected = "already holds a run"
    elif case == "missing_resume":
        argv += ["--resume_from_checkpoint", str(tmp_path / "checkpoint-9")]
        expected = f"resume_from_checkpoint {tmp_path / 'checkpoint-9'}: cannot resume from it: not a folder"
    elif case == "offline_hub":
        argv += ["--dataset_name", "sample-nlii"]
        expected = "dataset 'sample-nlii' is neither a local file or folder nor a Hub dataset that can be loaded now"
    elif case == "parquet":
        fake = tmp_path / "rows.parquet"
        fake.write_text("query,positive\nq,p\n")
        argv += ["--dataset_name", str(fake)]
        expected = f"{fake}: not a readable Parquet file"
    elif case == "empty_output_dir":
        argv[1] = ""
        expected = "output_dir must name a folder"
    elif case == "max_train_samples":
        argv += ["--max_train_samples", "0"]
        expected = "max_train_samples must be >= 1"
    else:
        if os.geteuid() == 0:  # root writes into read-only folders: use a folder that cannot be created instead
            (tmp_path / "a-file").write_text("")
            argv[1] = str(tmp_path / "a-file" / "out")
        else:
            out.mkdir()
            out.chmod(0o555)
        expected = "is not writable"
    code = _train_cli(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    if case == "offline_hub":
        assert "did you mean 'sample-nli'?" in err[0]


def test_resume_onto_another_architecture_is_one_line(tmp_path, capsys):
    from grace_trl.checks import RunStateError, check_resumed_run

    ckpt = tmp_path / "checkpoint-1"
    ckpt.mkdir()
    saved = {"embedding": vars(GRACESettings()), "model": {"architecture": "a" * 64, "lora": False}, "data": "d"}
    (ckpt / "grace_run.json").write_text(json.dumps(saved))
    current = {**saved, "model": {"architecture": "b" * 64, "lora": False}}
    with pytest.raises(RunStateError, match=r"checkpoint-1: .*\(model architecture differs from the checkpoint's\)"):
        check_resumed_run(str(ckpt), current, "grace_run.json")
    check_resumed_run(str(ckpt), saved, "grace_run.json")  # the same run resumes
