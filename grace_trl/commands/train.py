"""``grace-trl train``: a thin entry script (recipe YAML + CLI overrides via TrlParser).

Runs the same under ``accelerate launch -m grace_trl.commands.train --config ...``.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config

from ..aliases import resolve_model_name
from ..config import GRACEConfig
from ..data import SAMPLE_DATASETS, load_grace_dataset
from ..distributed import close_process_group

logger = logging.getLogger("grace_trl")


@dataclass
class ScriptArguments:
    """Where the training rows come from and which rewards score them."""

    dataset_name: str = field(default="sample-nli", metadata={
        "help": "Local .jsonl/.json/.csv/.tsv/.parquet/.txt file, a committed sample ('sample-nli', "
                "'sample-sentences', 'snli-triples') or a Hub dataset id."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={
        "help": "Split to train on (TRL's name; --dataset_split is accepted too).",
        "aliases": ["--dataset_split", "--dataset-split"]})
    dataset_test_split: str | None = field(default=None, metadata={
        "help": "Split to evaluate on at eval_strategy (TRL's name), e.g. 'test' of a Hub dataset or of a local "
                "folder holding train.csv and test.csv. Default: no eval dataset."})
    column_mapping: str | None = field(default=None, metadata={
        "help": "Which file columns hold GRACE's fields, e.g. 'query=sent0,positive=sent1,negatives=hard_neg' or "
                "'text=sentence'; '+' joins negative columns."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    reward_funcs: list[str] = field(default_factory=lambda: ["grace"], metadata={
        "help": "Reward functions from grace_trl.rewards' registry ('grace', 'think_format')."})


# The Trainer / GRPO / model fields most runs set, shown by the short ``--help`` next to GRACE's own.
COMMON_FIELDS = ("output_dir", "model_name_or_path", "max_steps", "num_train_epochs", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "steps_per_generation", "logging_steps", "save_steps", "bf16",
                 "activation_checkpointing", "use_peft", "use_vllm", "report_to", "push_to_hub", "hub_model_id",
                 "resume_from_checkpoint")


def build_parser() -> TrlParser:
    return TrlParser((ScriptArguments, GRACEConfig, ModelConfig), prog="grace-trl train", allow_abbrev=False)


def short_help(parser: TrlParser) -> str:
    """The options a GRACE run is about; ``--help-all`` prints TRL's full list."""
    import dataclasses

    helps = {f.name: f.metadata.get("help", "") for cls in (ScriptArguments, GRACEConfig, ModelConfig)
             for f in dataclasses.fields(cls)}
    # from the dataclasses: argparse's --no_<flag> action for a True boolean carries default False
    defaults = {}
    for cls in (ScriptArguments, GRACEConfig, ModelConfig):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                defaults[f.name] = f.default_factory()

    def line(name: str) -> str:
        text = " ".join(str(helps.get(name, "")).replace("`", "").split())
        text = first_sentence(text)  # one line per option
        default = defaults.get(name)
        shown = f" (default: {default})" if default not in (None, "", []) and len(str(default)) < 60 else ""
        return f"  --{name:<30} {text}{shown}"

    lines = [
        "usage: grace-trl train [--config RECIPE.yaml] [--FIELD VALUE ...]",
        "",
        "Train an LLM as a text embedder with GRACE. A recipe's keys are the field names below; a flag given",
        "on the command line overrides the recipe. Every flag is accepted as --name or --name-with-dashes.",
        "",
        "options:",
        f"  --{'config':<30} YAML recipe (e.g. recipes/smollm2-135m/sup_cpu.yaml).",
        f"  --{'help-all':<30} Every option (all GRPOConfig, TrainingArguments and ModelConfig fields).",
        "",
        "data:",
        *[line(f.name) for f in dataclasses.fields(ScriptArguments)],
        "",
        "GRACE:",
        *[line(name) for name in GRACEConfig.__annotations__
          if name not in COMMON_FIELDS and "checkpointing" not in name],  # GRACEConfig only re-declares those
        "",
        "common training options:",
        *[line(name) for name in COMMON_FIELDS],
        "",
        "Multi-GPU / DeepSpeed: add accelerate launch options, e.g. --accelerate_config zero2 --num_processes 8.",
        f"--accelerate_config takes a config TRL ships ({', '.join(trl_accelerate_configs())}) or a file, e.g.",
        "recipes/accelerate_configs/zero3_offload.yaml (that folder: ddp, zero2, zero3, zero3_offload,",
        "multi_node_zero3). FSDP is not supported.",
    ]
    return "\n".join(lines)


def first_sentence(text: str) -> str:
    """The first sentence of a help text; "e.g." and "i.e." do not end one."""
    import re

    if not text:
        return ""
    return re.split(r"(?<!\be\.g)(?<!\bi\.e)\.\s", text, maxsplit=1)[0].rstrip(".") + "."


def trl_accelerate_configs() -> list[str]:
    """The names ``--accelerate_config`` resolves to TRL's shipped configs (``trl/accelerate_configs/*.yaml``),
    less the FSDP ones, which GRACEConfig refuses."""
    from importlib import resources

    folder = resources.files("trl.accelerate_configs")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                  if p.name.endswith(".yaml") and "fsdp" not in p.name)


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if "--help-all" in argv:
        parser.print_help()
        raise SystemExit(0)
    if "-h" in argv or "--help" in argv:
        print(short_help(parser))
        raise SystemExit(0)
    from ..cli_args import UsageError, check_recipe, config_path

    config = config_path(argv)
    if config:
        check_recipe(config, parser)

    try:
        return parser.parse_args_and_config(args=argv)
    except ValueError as err:  # raised by the config dataclasses' validation: a bad value, not a bug
        raise UsageError(" ".join(str(err).split())) from err


def check_test_split(script_args: ScriptArguments, training_args: GRACEConfig) -> None:
    """A test split asked for is evaluated, so a run without evaluation would ignore it silently: refuse that."""
    from transformers.trainer_utils import IntervalStrategy

    from ..cli_args import UsageError

    if script_args.dataset_test_split is not None and training_args.eval_strategy == IntervalStrategy.NO:
        raise UsageError(f"dataset_test_split {script_args.dataset_test_split!r} is only evaluated with "
                         "eval_strategy 'steps' or 'epoch'; add e.g. --eval_strategy steps --eval_steps 50")


def load_datasets(script_args: ScriptArguments, training_args: GRACEConfig):
    """(train dataset, eval dataset or None) from ``dataset_train_split`` and ``dataset_test_split``."""
    def load(split: str, limit: int | None):
        return load_grace_dataset(
            script_args.dataset_name, mode=training_args.mode, column_mapping=script_args.column_mapping,
            split=split, dataset_config=script_args.dataset_config,
            num_negatives=training_args.num_negatives if training_args.mode == "supervised" else None, limit=limit)

    limit = script_args.max_train_samples
    if limit is not None and limit < 1:
        from ..cli_args import UsageError

        raise UsageError(f"max_train_samples must be >= 1 (or unset for every row), got {limit}")
    train = load(script_args.dataset_train_split, limit)
    test = script_args.dataset_test_split
    return train, (load(test, None) if test is not None else None)


def run(script_args: ScriptArguments, training_args: GRACEConfig, model_args: ModelConfig):
    from accelerate import PartialState

    from ..checks import OutputDirLock, check_writable

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    check_test_split(script_args, training_args)
    main = PartialState().is_main_process
    if main:
        check_writable(training_args.output_dir)  # before the model loads, not at the first save
    # the whole run, final save included, holds output_dir: a second run into it is refused, naming this one
    lock = OutputDirLock(training_args.output_dir).acquire() if main else None
    try:
        return _run_locked(script_args, training_args, model_args)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(script_args: ScriptArguments, training_args: GRACEConfig, model_args: ModelConfig):
    from ..trainer import GRACETrainer

    checkpoint = _check_output_dir(training_args)
    dataset, eval_dataset = load_datasets(script_args, training_args)
    logger.info("training rows: %d (%s, mode=%s)", len(dataset), script_args.dataset_name, training_args.mode)
    if eval_dataset is not None:
        logger.info("eval rows: %d (split %s)", len(eval_dataset), script_args.dataset_test_split)
    model_name = resolve_model_name(model_args.model_name_or_path or "smollm2-135m")
    init_kwargs = dict(training_args.model_init_kwargs or {})
    if model_args.dtype and "dtype" not in init_kwargs:
        init_kwargs["dtype"] = model_args.dtype
    if model_args.attn_implementation and "attn_implementation" not in init_kwargs:
        init_kwargs["attn_implementation"] = model_args.attn_implementation
    training_args.model_init_kwargs = init_kwargs or None
    trainer = GRACETrainer(
        model=model_name,
        reward_funcs=list(script_args.reward_funcs),
        args=training_args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.accelerator.is_main_process:
        # card and tokenizer first: save_model writes grace_save_complete.json last, after every model file
        from ..checks import remove_save_marker

        remove_save_marker(training_args.output_dir)
        trainer.processing_class.save_pretrained(training_args.output_dir)
        source = script_args.dataset_name
        hub_dataset = None if source in SAMPLE_DATASETS or os.path.exists(os.path.expanduser(source)) else source
        trainer.create_model_card(model_name=os.path.basename(os.path.abspath(training_args.output_dir)),
                                  dataset_name=hub_dataset)
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        logger.info("saved GRACE checkpoint to %s (curves: training_curves.csv/png there)",
                    os.path.abspath(training_args.output_dir))
    return trainer


def _check_output_dir(training_args: GRACEConfig) -> str | None:
    """Before anything loads: refuse a fresh run into a used output_dir; resolve ``last`` to a complete checkpoint."""
    from accelerate import PartialState

    from ..checks import check_fresh_output_dir, resolve_resume_checkpoint
    from ..trainer import SAMPLES_FILE

    main = PartialState().is_main_process
    resume = training_args.resume_from_checkpoint
    check_fresh_output_dir(training_args.output_dir, SAMPLES_FILE, resume, training_args.overwrite_output_dir,
                           remove=main)
    checkpoint = resolve_resume_checkpoint(training_args.output_dir, resume, clean=main)
    PartialState().wait_for_everyone()
    return checkpoint


ENTRY_MODULE = "grace_trl.commands.train"  # what accelerate launch runs on every process


def split_launch_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(accelerate launch options, training options): what no training dataclass takes goes to accelerate.

    ``--accelerate_config NAME`` names one of TRL's shipped configs (zero2, zero3, multi_gpu, ...; not fsdp*) or a
    file, as ``trl grpo`` does.
    """
    from accelerate.commands.launch import launch_command_parser
    from trl.cli.accelerate_config import resolve_accelerate_config_argument

    from ..cli_args import UsageError, check_recipe, config_path

    parser = build_parser()
    if config_path(argv):
        check_recipe(config_path(argv), parser)  # an unknown key is reported as such, not as a launch option
    try:
        *_, cli_remaining = parser.parse_args_and_config(argv, return_remaining_strings=True,
                                                         separate_remaining_strings=True)
    except ValueError as err:
        raise UsageError(" ".join(str(err).split())) from err
    if not cli_remaining:
        return [], argv
    script_argv, pending = [], list(cli_remaining)
    for token in argv:  # cli_remaining is an ordered subsequence of argv
        if pending and token == pending[0]:
            pending.pop(0)
        else:
            script_argv.append(token)
    try:
        launch_args = resolve_accelerate_config_argument(list(cli_remaining))
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from err
    _, unknown = launch_command_parser().parse_known_args([*launch_args, "--module", ENTRY_MODULE])
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (neither a training option nor an "
                         "accelerate launch option; grace-trl train --help-all lists the training options)")
    return launch_args, script_argv


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(flag in argv for flag in ("-h", "--help", "--help-all")):
        launch_args, script_argv = split_launch_args(argv)
        if launch_args:
            # like `trl grpo --accelerate_config zero2 --num_processes 8`: this module under accelerate launch
            from accelerate.commands.launch import launch_command, launch_command_parser

            launch_command(launch_command_parser().parse_args([*launch_args, "--module", ENTRY_MODULE, *script_argv]))
            return 0
    script_args, training_args, model_args = parse_args(argv)
    run(script_args, training_args, model_args)
    close_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
