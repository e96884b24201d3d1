"""``grace-trl train``: a thin entry script (recipe YAML + CLI overrides via TrlParser).

Runs the same under ``accelerate launch -m grace_trl.commands.train --config ...``.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config

from ..config import GRACEConfig
from ..data import SAMPLE_DATASETS, load_grace_dataset
from ..models import resolve_model_name

logger = logging.getLogger("grace_trl")


@dataclass
class ScriptArguments:
    """Where the training rows come from and which rewards score them."""

    dataset_name: str = field(default="sample-nli", metadata={
        "help": "Local .jsonl/.json/.csv/.tsv/.parquet/.txt file, a committed sample ('sample-nli', "
                "'sample-sentences') or a Hub dataset id."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    column_mapping: str | None = field(default=None, metadata={
        "help": "e.g. 'query=sent0,positive=sent1,negatives=hard_neg' or 'text=sentence'; '+' joins negative columns."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    reward_funcs: list[str] = field(default_factory=lambda: ["grace"], metadata={
        "help": "Reward functions from grace_trl.rewards' registry ('grace', 'think_format')."})


def parse_args(argv=None):
    parser = TrlParser((ScriptArguments, GRACEConfig, ModelConfig))
    return parser.parse_args_and_config(args=argv)


def run(script_args: ScriptArguments, training_args: GRACEConfig, model_args: ModelConfig):
    from ..trainer import GRACETrainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    dataset = load_grace_dataset(
        script_args.dataset_name, mode=training_args.mode, column_mapping=script_args.column_mapping,
        split=script_args.dataset_split, dataset_config=script_args.dataset_config,
        num_negatives=training_args.num_negatives if training_args.mode == "supervised" else None,
        limit=script_args.max_train_samples)
    logger.info("training rows: %d (%s, mode=%s)", len(dataset), script_args.dataset_name, training_args.mode)
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
        peft_config=get_peft_config(model_args),
    )
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint in ("true", "True", "last"):
        checkpoint = True
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(training_args.output_dir)
        from ..reporting import save_training_curves

        csv_path, png_path = save_training_curves(trainer.state.log_history, training_args.output_dir)
        source = script_args.dataset_name
        hub_dataset = None if source in SAMPLE_DATASETS or os.path.exists(os.path.expanduser(source)) else source
        trainer.create_model_card(model_name=os.path.basename(os.path.abspath(training_args.output_dir)),
                                  dataset_name=hub_dataset)
        logger.info("saved GRACE checkpoint to %s (curves: %s, %s)", os.path.abspath(training_args.output_dir),
                    csv_path, png_path)
    return trainer


def main(argv=None) -> int:
    script_args, training_args, model_args = parse_args(argv)
    run(script_args, training_args, model_args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
