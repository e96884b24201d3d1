"""Every recipe parses into the trainer's dataclasses, carries the paper's settings, and points at files and
commands that exist; every accelerate config goes through accelerate's own launch-time validation."""

from __future__ import annotations

import os
import re
import shlex
import warnings
from dataclasses import fields
from pathlib import Path
from unittest import mock

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TRAIN_ENTRY_POINTS = ("grace-trl train", "grace_trl.commands.train")


def _is_grace_recipe(path: Path) -> bool:
    """Recipes for the GRACE trainer say so in their comments (baseline recipes name their own module)."""
    comments = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    return any(re.search(re.escape(entry) + r"(\s|$)", comments) for entry in TRAIN_ENTRY_POINTS)  # not train-cl


ALL_YAML = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "accelerate_configs" not in p.parts)
RECIPES = [p for p in ALL_YAML if _is_grace_recipe(p)]
# the paper's multi-GPU recipes; recipes/smollm2-135m/ holds the embedded model's CPU and single-GPU recipes
GPU_RECIPES = [p for p in RECIPES
               if (yaml.safe_load(p.read_text()) or {}).get("bf16") and "smollm2-135m" not in p.parts]
SMOLLM2 = REPO / "recipes" / "smollm2-135m"
ACCELERATE_CONFIGS = sorted((REPO / "recipes" / "accelerate_configs").glob("*.yaml"))
PAPER_MODELS = {
    "Qwen/Qwen2.5-1.5B-Instruct", "meta-llama/Llama-3.2-3B-Instruct", "Qwen/Qwen2.5-3B-Instruct",
    "Qwen/Qwen3-4B-Instruct-2507",
}


def _rel(p: Path) -> str:
    return str(p.relative_to(REPO))


def _comment_commands(path: Path, program: str) -> list[list[str]]:
    """Shell commands written in a recipe's comments (with backslash continuations joined)."""
    lines = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    joined = re.sub(r"\\\s*\n\s*", " ", "\n".join(lines))
    return [shlex.split(line) for line in joined.splitlines() if line.startswith(program)]


def test_every_recipe_names_its_entry_point():
    for p in ALL_YAML:
        comments = "\n".join(line for line in p.read_text().splitlines() if line.startswith("#"))
        named = _is_grace_recipe(p) or "grace-trl train-cl" in comments or "python -m grace_trl." in comments
        assert named, f"{_rel(p)} names no command to run it"
    assert len(RECIPES) >= 13


@pytest.mark.parametrize("name", ["sup_cpu.yaml", "sup_full_cpu.yaml", "sup_gpu.yaml"])
def test_default_recipes_are_pure_grace_on_the_committed_triples_with_dev_and_generation_checks(name):
    from grace_trl.commands.train import parse_args
    from grace_trl.data import SAMPLE_DATASETS

    script, t, m = parse_args(["--config", str(SMOLLM2 / name), "--use_cpu", "true"])
    assert t.contrastive_weight == 0.0 and t.beta == 0.0  # the paper's method: no InfoNCE term
    assert script.dataset_name == "snli-triples" and script.dataset_name in SAMPLE_DATASETS
    assert t.embedding_evaluator and t.eval_on_start and 0 < t.max_train_minutes <= (45 if "cpu" in name else 10)
    rollouts_per_update = t.per_device_train_batch_size * t.gradient_accumulation_steps
    assert rollouts_per_update % t.num_generations == 0
    assert t.steps_per_generation % t.gradient_accumulation_steps == 0  # whole updates per rollout batch
    updates_per_generation = t.steps_per_generation // t.gradient_accumulation_steps
    if "cpu" in name:  # the measured CPU runs (README): updates of 32, 2 per rollout batch of 64; RSS <= 6 GB
        assert t.generation_check and rollouts_per_update == 32 and t.per_device_train_batch_size <= 8
        assert updates_per_generation == 2
        if name == "sup_cpu.yaml":  # the default: LoRA at 2e-4 sampled merged, 16 updates, dev scores at 0, 8, 16
            assert m.use_peft and m.lora_r == 16 and m.lora_target_modules == "all-linear" and t.learning_rate == 2e-4
            assert t.merge_lora_for_generation
            assert t.max_steps == 16 and t.eval_steps == 8 and t.output_dir.endswith("smollm2-135m-grace-sup")
        else:  # full fine-tuning, 17 updates
            assert not m.use_peft and t.learning_rate == 2e-5 and t.max_steps == 17
            assert t.output_dir.endswith("smollm2-135m-grace-sup-full")
    else:  # the reference's 4 updates per generation
        assert t.bf16 and rollouts_per_update == 128 and t.num_generations == 8 and updates_per_generation == 4


def test_hybrid_recipe_keeps_the_infonce_term_and_says_what_it_costs():
    text = (SMOLLM2 / "hybrid_cpu.yaml").read_text()
    assert yaml.safe_load(text)["contrastive_weight"] > 0 and "costs generation" in text.replace("\n# ", " ")


def test_recipes_exist_for_every_paper_backbone():
    assert len(ACCELERATE_CONFIGS) >= 5
    by_model: dict[str, set[str]] = {}
    for p in GPU_RECIPES:
        r = yaml.safe_load(p.read_text())
        by_model.setdefault(r["model_name_or_path"], set()).add(p.stem)
    assert set(by_model) == PAPER_MODELS
    for model, names in by_model.items():
        assert {"config_sup", "config_sup_lora", "config_unsup"} <= names, (model, names)


@pytest.mark.parametrize("path", RECIPES, ids=_rel)
def test_recipe_keys_are_known_fields(path):
    from trl import ModelConfig

    from grace_trl.commands.train import ScriptArguments
    from grace_trl.config import GRACEConfig

    known = {f.name for cls in (ScriptArguments, GRACEConfig, ModelConfig) for f in fields(cls)}
    recipe = yaml.safe_load(path.read_text())
    unknown = sorted(set(recipe) - known)
    assert not unknown, f"{_rel(path)}: keys {unknown} are not fields of ScriptArguments/GRACEConfig/ModelConfig"


@pytest.mark.parametrize("path", RECIPES, ids=_rel)
def test_recipe_parses_with_trl_parser(path):
    from grace_trl.commands.train import parse_args
    from grace_trl.data import parse_column_mapping

    recipe = yaml.safe_load(path.read_text())
    extra = ["--use_cpu", "true"] if recipe.get("bf16") else []  # bf16 on a CPU-only box needs use_cpu to validate
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        script_args, training_args, model_args = parse_args(["--config", str(path), *extra])
    # a newcomer's first run starts without a deprecation warning (transformers 5.23 renamed gradient_checkpointing)
    deprecated = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))
                  and "checkpointing" in str(w.message)]
    assert not deprecated, f"{_rel(path)}: {deprecated}"
    assert training_args.activation_checkpointing == recipe.get("activation_checkpointing", True)
    assert training_args.gradient_checkpointing == training_args.activation_checkpointing  # what TRL 1.16 reads
    assert model_args.model_name_or_path == recipe["model_name_or_path"]
    assert training_args.mode == recipe["mode"]
    mapping = parse_column_mapping(script_args.column_mapping)
    if training_args.mode == "supervised":
        assert {"query", "positive"} <= set(mapping) or not mapping
    else:
        assert set(mapping) <= {"text"}
    # GRACE keeps every group of G rollouts on one process
    per_process = training_args.per_device_train_batch_size * training_args.steps_per_generation
    assert per_process % training_args.num_generations == 0
    source = script_args.dataset_name
    if source.endswith((".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")) or "/" not in source:
        # local files are produced by a prepare-data line in the recipe (or are committed samples)
        from grace_trl.data import SAMPLE_DATASETS

        assert source in SAMPLE_DATASETS or any(
            cmd[cmd.index("--output") + 1] == source for cmd in _comment_commands(path, "grace-trl prepare-data")
        ), f"{_rel(path)}: local dataset {source} is neither a sample nor produced by a prepare-data line"
    else:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", source), f"{source!r} is not a Hub dataset id"


def test_a_recipe_with_the_old_checkpointing_keys_still_trains_as_written(tmp_path):
    """``gradient_checkpointing(_kwargs)`` (before transformers 5.23) keep working, with transformers' warning."""
    from grace_trl.commands.train import parse_args

    text = (SMOLLM2 / "sup_gpu.yaml").read_text().replace("activation_checkpointing: false", "")
    assert "checkpointing" not in text
    for value in (False, True):
        old = tmp_path / f"old_{value}.yaml"
        old.write_text(text + f"\ngradient_checkpointing: {str(value).lower()}\n"
                              "gradient_checkpointing_kwargs:\n  use_reentrant: true\n")
        with pytest.warns(FutureWarning, match="gradient_checkpointing"):
            _, t, _ = parse_args(["--config", str(old), "--use_cpu", "true"])
        assert t.activation_checkpointing is value and t.gradient_checkpointing is value
        assert t.activation_checkpointing_kwargs == {"use_reentrant": True} == t.gradient_checkpointing_kwargs
    both = tmp_path / "both.yaml"
    both.write_text(text + "\nactivation_checkpointing: true\ngradient_checkpointing: false\n")
    with pytest.raises(ValueError, match="disagree"):
        parse_args(["--config", str(both), "--use_cpu", "true"])


@pytest.mark.parametrize("path", GPU_RECIPES, ids=_rel)
def test_gpu_recipe_has_paper_settings(path):
    from grace_trl.commands.train import parse_args

    _, t, m = parse_args(["--config", str(path), "--use_cpu", "true"])
    assert t.num_generations == 8
    assert (t.lambda_consistency, t.lambda_cross, t.tau, t.truncation_penalty) == (0.2, 0.2, 0.1, 1.0)
    assert (t.beta, t.epsilon, t.scale_rewards, t.temperature, t.anchor_temperature) == (0.0, 0.2, "none", 1.0, 0.5)
    assert t.lr_scheduler_type == "constant" or str(t.lr_scheduler_type).endswith("CONSTANT")
    assert t.learning_rate == (1e-5 if m.use_peft else 1e-6)
    assert t.bf16 and t.activation_checkpointing
    assert t.use_vllm and t.vllm_mode == "colocate"
    assert t.max_completion_length == 256 and "2048" in path.read_text()
    # reference schedule on the 8 GPUs of the launch line: 64 rows (groups of G) per rollout batch, 4 updates each
    assert t.per_device_train_batch_size * t.steps_per_generation * 8 // t.num_generations == 64
    assert t.steps_per_generation // t.gradient_accumulation_steps == 4
    assert t.loss_type == "dapo"
    if m.use_peft:
        assert m.lora_r > 0 and m.lora_target_modules
    else:
        assert m.dtype == "float32", "full fine-tuning at lr 1e-6 needs fp32 master weights"


@pytest.mark.parametrize("path", GPU_RECIPES, ids=_rel)
def test_gpu_recipe_launch_line_matches_memory_plan(path):
    from grace_trl.commands.prepare_data import build_parser as prepare_parser
    from grace_trl.memory import Architecture, TrainingShape, load_model_config, plan, recommend

    launches = _comment_commands(path, "accelerate launch")
    assert len(launches) == 1, f"{_rel(path)} should document exactly one accelerate launch line"
    cmd = launches[0]
    acc = cmd[cmd.index("--config_file") + 1]
    assert (REPO / acc).is_file(), f"{acc} does not exist"
    assert cmd[cmd.index("--config") + 1] == _rel(path)
    assert cmd[cmd.index("-m") + 1] == "grace_trl.commands.train"
    for prep in _comment_commands(path, "grace-trl prepare-data"):
        prepare_parser().parse_args(prep[2:])  # documented flags exist

    recipe = yaml.safe_load(path.read_text())
    with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
        config, _ = load_model_config(recipe["model_name_or_path"])
    arch = Architecture.from_config(config, recipe["model_name_or_path"])
    choice, _ = recommend(plan(arch, TrainingShape.from_recipe(recipe), num_gpus=8, gpu_memory_gib=80))
    assert choice is not None and Path(acc).stem == choice.strategy, (acc, choice)


def _launch_args(config: Path, num_processes: int):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(config), "--num_processes", str(num_processes),
                              "-m", "grace_trl.commands.train", "--config", "recipe.yaml"])
    return _validate_launch_command(args)


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=_rel)
def test_accelerate_config_loads_and_validates(path):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(path))  # raises on unknown keys
    assert isinstance(config, ClusterConfig)
    assert config.mixed_precision == "bf16" and not config.use_cpu
    args, defaults, _ = _launch_args(path, num_processes=3)
    assert args.num_processes == 3, "--num_processes on the command line must override the file"
    assert args.mixed_precision == "bf16"
    if path.stem == "ddp":
        assert config.distributed_type == DistributedType.MULTI_GPU and args.multi_gpu
    else:
        assert config.distributed_type == DistributedType.DEEPSPEED and args.use_deepspeed


@pytest.mark.parametrize("path", [p for p in ACCELERATE_CONFIGS if p.stem != "ddp"], ids=_rel)
def test_deepspeed_configs_reach_the_deepspeed_plugin(path):
    """The launcher's environment, read back by accelerate's DeepSpeedPlugin, gives the intended ZeRO setup."""
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults, mp_from_config = _launch_args(path, num_processes=4)
    assert args.main_process_port in (None, 29500)
    args.main_process_port = 0  # a free port: 29500 may be busy on a shared test machine
    fields_ = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields_)
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if k.startswith("ACCELERATE")}):
        plugin = DeepSpeedPlugin()
    zero = plugin.deepspeed_config["zero_optimization"]
    expected_stage = 2 if path.stem == "zero2" else 3
    assert zero["stage"] == expected_stage
    offload = "cpu" if "offload" in path.stem else "none"
    assert zero["offload_optimizer"]["device"] == offload and zero["offload_param"]["device"] == offload
    if expected_stage == 3:
        assert plugin.zero3_init_flag and zero["stage3_gather_16bit_weights_on_model_save"]
    if path.stem.startswith("multi_node"):
        assert args.num_machines >= 2 and args.main_process_ip and defaults.main_process_port == 29500
