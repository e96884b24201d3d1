"""``grace-trl plan-memory``: per-GPU memory of a recipe under DDP / ZeRO-2 / ZeRO-3 / ZeRO-3 offload.

Reads the recipe YAML directly (no TrainingArguments are built, so a bf16 GPU recipe can be planned
on a laptop) and the model's ``config.json`` (local folder, Hub when online, else a built-in table).
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from ..cli_args import ArgumentParser
from ..memory import STRATEGIES, Architecture, TrainingShape, format_table, load_model_config, plan, recommend


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="grace-trl plan-memory", description=__doc__)
    p.add_argument("--config", required=True, help="Recipe YAML (the one passed to grace-trl train).")
    p.add_argument("--num-gpus", type=int, default=8, help="Total GPUs (processes) over all nodes.")
    p.add_argument("--gpus-per-node", type=int, default=None,
                   help="For the CPU RAM of offload (default: all on one node).")
    p.add_argument("--gpu-memory-gib", type=float, default=80.0, help="Memory of one GPU in GiB.")
    p.add_argument("--prompt-tokens", type=int, default=None,
                   help="Tokens of a templated prompt (system prompt + text); default 128.")
    p.add_argument("--model", default=None, help="Override model_name_or_path of the recipe.")
    p.add_argument("--strategy", choices=STRATEGIES, action="append", help="Only these strategies (repeatable).")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="Override a recipe value, e.g. --set per_device_train_batch_size=4 (YAML-parsed).")
    p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    return p


def load_recipe(path: str, overrides: list[str]) -> dict:
    with open(path, encoding="utf-8") as f:
        recipe = yaml.safe_load(f) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping of field: value, got {type(recipe).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        recipe[key.strip()] = yaml.safe_load(value)
    return recipe


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    recipe = load_recipe(args.config, args.set)
    model = args.model or recipe.get("model_name_or_path")
    if not model:
        raise ValueError(f"{args.config} has no model_name_or_path; pass --model")
    config, source = load_model_config(model)
    arch = Architecture.from_config(config, name=model)
    shape = TrainingShape.from_recipe(recipe, prompt_tokens=args.prompt_tokens)
    estimates = plan(arch, shape, args.num_gpus, args.gpu_memory_gib, tuple(args.strategy or STRATEGIES),
                     args.gpus_per_node)
    choice, reason = recommend(estimates)
    if args.json:
        print(json.dumps({"model": model, "config_source": source, "parameters": arch.num_parameters(),
                          "estimates": [e.as_dict() for e in estimates],
                          "recommended": choice.strategy if choice else None, "reason": reason}, indent=2))
    else:
        print(f"(model config from {source})")
        print(format_table(arch, shape, estimates))
        print()
        print("recommendation: " + reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
