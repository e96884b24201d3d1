"""grace-trl behaves like TRL's CLI: --version, a short train --help, both flag spellings, no prefix matching,
and one-line errors (no traceback) for bad recipes, model names and data files."""

from __future__ import annotations

import pytest

from grace_trl.cli import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"grace-trl {version('grace-trl')} (trl ")


def test_train_help_is_short_and_lists_grace_fields(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) < 80, "the short help should fit a screen or two"
    for flag in ("--config", "--help-all", "--lambda_consistency", "--reward_variant", "--max_steps",
                 "--dataset_name"):
        assert any(line.strip().startswith(flag) for line in lines), flag
    assert "`" not in out  # plain text, no markup


def test_train_help_shows_each_fields_own_default(capsys):
    """A True boolean has a --no_<flag> twin whose argparse default is False; the help shows the field's."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("--")}
    assert lines["--fuse_anchor_generation"].endswith("(default: True)")
    assert lines["--contrastive_weight"].endswith("(default: 0.0)")
    assert lines["--learning_rate"].endswith("(default: 1e-06)")


def test_both_flag_spellings_and_no_prefix_matching(tmp_path, capsys):
    from grace_trl.commands.export import build_parser
    from grace_trl.commands.train import parse_args
    from grace_trl.commands.train_cl import parse_args as _parse

    common = ["--output_dir", str(tmp_path), "--use_cpu", "true"]
    underscored = parse_args(["--max_steps", "3", "--num-generations", "2", *common])[1]
    dashed = parse_args(["--max-steps", "3", "--num_generations", "2", *common])[1]
    assert underscored.max_steps == dashed.max_steps == 3
    assert underscored.num_generations == dashed.num_generations == 2
    assert build_parser().parse_args(["--checkpoint", "a", "--output", "b", "--base_model", "x"]).base_model == "x"
    assert _parse(["--max-steps", "5"]).max_steps == 5  # train-cl's fields are underscored: dashes work too

    assert main(["train", "--max_step", "3", *common]) == 2
    assert "--max_step" in _error_line(capsys)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--check", "a", "--output", "b"])  # no silent '--checkpoint'


def test_unknown_recipe_key_names_the_closest_valid_key(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("max_step: 3\nmode: supervised\n")
    assert main(["train", "--config", str(recipe)]) == 2
    expected = f"grace-trl train: error: {recipe}: unknown key 'max_step'; did you mean 'max_steps'?"
    assert _error_line(capsys) == expected


def test_unknown_model_alias_lists_the_known_ones(tmp_path, capsys):
    rc = main(["train", "--model_name_or_path", "smollm2-350m", "--max_train_samples", "2", "--use_cpu", "true",
               "--output_dir", str(tmp_path)])
    assert rc == 2
    assert _error_line(capsys) == ("grace-trl train: error: unknown model 'smollm2-350m': not a local folder, "
                                   "a Hub id (organization/name) or a known alias (smollm2-135m)")


def test_missing_data_file_is_one_line(tmp_path, capsys):
    missing = tmp_path / "pairs.jsonl"
    assert main(["train", "--dataset_name", str(missing), "--use_cpu", "true", "--output_dir", str(tmp_path)]) == 2
    assert _error_line(capsys) == f"grace-trl train: error: dataset file {missing} does not exist"


def test_trl_script_argument_names(tmp_path):
    from grace_trl.commands.train import parse_args

    common = ["--output_dir", str(tmp_path), "--use_cpu", "true"]
    assert parse_args(["--dataset_train_split", "dev", *common])[0].dataset_train_split == "dev"
    assert parse_args(["--dataset-split", "dev", *common])[0].dataset_train_split == "dev"  # the former name


def _split_folder(tmp_path):
    """A local dataset folder whose file names are its splits, as ``datasets.load_dataset(folder)`` reads them."""
    folder = tmp_path / "nli"
    folder.mkdir()
    (folder / "train.csv").write_text("sent0,sent1,hard_neg\n" + "".join(
        f"query {i},positive {i},negative {i}\n" for i in range(4)))
    (folder / "test.csv").write_text("sent0,sent1,hard_neg\nheld-out query,held-out positive,held-out negative\n")
    return folder


def test_dataset_test_split_is_the_eval_dataset(tmp_path, tiny_model_path):
    from grace_trl.commands.train import parse_args, run

    folder = _split_folder(tmp_path)
    common = ["--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--bf16", "false", "--report_to", "none"]
    assert parse_args(common)[0].dataset_test_split is None  # no eval dataset unless asked for
    args = parse_args(["--dataset_name", str(folder), "--dataset_test_split", "test", "--model_name_or_path",
                       tiny_model_path, "--max_steps", "1", "--num_generations", "2", "--per_device_train_batch_size",
                       "2", "--per_device_eval_batch_size", "2", "--max_completion_length", "4",
                       "--eval_strategy", "steps", "--eval_steps", "1", *common])
    trainer = run(*args)
    assert trainer.train_dataset["query"] == [f"query {i}" for i in range(4)]
    assert trainer.eval_dataset["query"] == ["held-out query"]
    assert any("eval_reward" in record for record in trainer.state.log_history)


def test_dataset_test_split_errors_are_one_line(tmp_path, capsys):
    folder = _split_folder(tmp_path)
    common = ["--use_cpu", "true", "--output_dir", str(tmp_path / "out"), "--eval_strategy", "steps"]
    assert main(["train", "--dataset_name", str(folder), "--dataset_test_split", "validation", *common]) == 2
    assert _error_line(capsys) == (f"grace-trl train: error: {folder} has no split 'validation'; "
                                   "its splits are ['train', 'test']")
    one_file = folder / "train.csv"
    assert main(["train", "--dataset_name", str(one_file), "--dataset_test_split", "test", *common]) == 2
    assert _error_line(capsys) == (f"grace-trl train: error: {one_file} has no split 'test'; its splits are "
                                   "['train'] (a single file is one split; pass a folder with train and test files)")
    assert main(["train", "--dataset_name", str(folder), "--dataset_test_split", "test", "--use_cpu", "true",
                 "--output_dir", str(tmp_path / "out")]) == 2
    assert _error_line(capsys) == ("grace-trl train: error: dataset_test_split 'test' is only evaluated with "
                                   "eval_strategy 'steps' or 'epoch'; add e.g. --eval_strategy steps --eval_steps 50")


def test_train_help_keeps_whole_sentences_and_names_files_that_exist(capsys):
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip().startswith("--")}
    assert "e.g. 'query=sent0,positive=sent1,negatives=hard_neg' or 'text=sentence'" in lines["--column_mapping"]
    assert "e.g. 'test' of a Hub dataset" in lines["--dataset_test_split"]
    recipes = re.findall(r"recipes/\S+?\.yaml", out)
    assert recipes and all((root / recipe).is_file() for recipe in recipes), recipes
    for name in sorted(p.stem for p in (root / "recipes" / "accelerate_configs").glob("*.yaml")):
        assert name in out, name


def test_eval_help_explains_every_option_and_its_default():
    from grace_trl.commands.eval import build_parser

    for action in build_parser()._actions:
        name = action.option_strings[-1]
        assert action.help, f"{name} has no help text"
        if action.default not in (None, False) and name != "--help":
            assert "default" in action.help, f"{name} does not say its default ({action.default})"
