"""Recipe search on the embedded SmolLM2-135M: train under a wall-clock budget, score on the STS-B *dev* split.

Each named configuration is the CPU recipe plus overrides. A run trains until ``--minutes`` have
passed (the step in progress finishes), saves, then embeds a seeded STS-B dev subset with
``GRACEEncoder`` with and without rationale. Every finished run is appended to
``benchmarks/results/recipe_search.csv`` and the Markdown table beside it is rebuilt, so a search
spread over several sessions continues where it stopped. ``--base`` scores the untrained model
under the same prompt (its dev rationales are cached: they never change).

Selection uses dev scores only; the STS-B test split, SciFact and Banking77 are for the final report.

Usage:
    python benchmarks/recipe_search.py --base
    python benchmarks/recipe_search.py --run lr2e5_spg4 --minutes 8
    python benchmarks/recipe_search.py --list
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BASE_RECIPE = ROOT / "recipes" / "smollm2-135m" / "sup_full_cpu.yaml"
CACHE = ROOT / "outputs" / "rationale_cache"

# name -> (recipe, overrides). Overrides are CLI flags of ``grace-trl train``, on top of the recipe file *as it is
# now*. hybrid_cpu.yaml is the earlier CPU default (GRACE + InfoNCE, lr 2e-5, steps_per_generation 4,
# contrastive_weight 1.0, 300 triples); sup_full_cpu.yaml is pure GRACE (full fine-tuning) on the 6,337 SNLI
# triples (the LoRA default sup_cpu.yaml came later). Rows that predate a recipe's current values spell out the
# values they used; the results table keeps each row's overrides as run.
PRE_SEARCH = {"steps_per_generation": 1, "learning_rate": 5e-6, "contrastive_weight": 0.0}
RL_ONLY = {"steps_per_generation": 4, "learning_rate": 2e-5, "contrastive_weight": 0.0}
CONFIGS: dict[str, tuple[str, dict]] = {
    # the CPU recipe as it stood before the first search (lr 5e-6, 2 groups x G=4 per step, 1 update per generation)
    "default": ("hybrid_cpu.yaml", PRE_SEARCH),
    # 4 updates per generation (reference schedule) with 8 groups generated at once
    "spg4_lr5e6": ("hybrid_cpu.yaml", {**RL_ONLY, "learning_rate": 5e-6}),
    "spg4_lr2e5": ("hybrid_cpu.yaml", RL_ONLY),
    "spg4_lr5e5": ("hybrid_cpu.yaml", {**RL_ONLY, "learning_rate": 5e-5}),
    # + auxiliary InfoNCE on the rollouts' pooled hidden states
    "spg4_lr2e5_cl0.1": ("hybrid_cpu.yaml", {**RL_ONLY, "contrastive_weight": 0.1}),
    "spg4_lr2e5_cl1": ("hybrid_cpu.yaml", {**RL_ONLY, "contrastive_weight": 1.0}),
    # InfoNCE only: no policy-gradient signal (all rewards equal -> zero advantages)
    "spg4_lr2e5_cl1_noRL": ("hybrid_cpu.yaml", {**RL_ONLY, "contrastive_weight": 1.0, "tau": 1e6,
                                                "truncation_penalty": 0.0}),
    "hybrid": ("hybrid_cpu.yaml", {}),
    # the README table's hybrid and InfoNCE-only rows, step-bounded (16 updates of 8, as the hybrid's STS-B row)
    # so a busy machine changes their wall clock, not the model: run with --minutes 1000
    "hybrid_16": ("hybrid_cpu.yaml", {"max_steps": 16}),
    "infonce_only_16": ("hybrid_cpu.yaml", {"max_steps": 16, "tau": 1e6, "truncation_penalty": 0.0}),
    "pure_beta_33": ("sup_full_cpu.yaml", {"max_steps": 33, "beta": 0.04}),
    # pure GRACE (sup_full_cpu.yaml: 6,337 triples, G=4, 16 rollouts per update in 2 micro-batches of 8, 4 updates per
    # 64-rollout generation). pure_b16 ran as one micro-batch of 16 (the same updates, more memory).
    "pure_b16": ("sup_full_cpu.yaml", {}),
    "pure_b8": ("sup_full_cpu.yaml", {"gradient_accumulation_steps": 1, "steps_per_generation": 4}),
    "pure_b32": ("sup_full_cpu.yaml", {"gradient_accumulation_steps": 4, "steps_per_generation": 16}),
    "pure_b16_spg8": ("sup_full_cpu.yaml", {"steps_per_generation": 16}),
    "pure_b8_lr5e5": ("sup_full_cpu.yaml", {"gradient_accumulation_steps": 1, "steps_per_generation": 4,
                                       "learning_rate": 5e-5}),
    "pure_b8_len32": ("sup_full_cpu.yaml", {"gradient_accumulation_steps": 1, "steps_per_generation": 4,
                                       "max_completion_length": 32}),
    "pure_b16_lr5e5": ("sup_full_cpu.yaml", {"learning_rate": 5e-5}),
    "pure_b16_lr1e5": ("sup_full_cpu.yaml", {"learning_rate": 1e-5}),
    "pure_b16_G8": ("sup_full_cpu.yaml", {"num_generations": 8}),
    "pure_b16_len32": ("sup_full_cpu.yaml", {"max_completion_length": 32}),
    "pure_b16_paper": ("sup_full_cpu.yaml", {"reward_variant": "paper"}),
    "pure_b16_beta": ("sup_full_cpu.yaml", {"beta": 0.04}),
    "pure_b16_lora_lr2e4": ("sup_full_cpu.yaml", {"learning_rate": 2e-4, "use_peft": True, "lora_r": 16,
                                                  "lora_alpha": 32, "lora_target_modules": "all-linear"}),
    # unsupervised (300 committed sentences)
    "unsup_spg4_lr2e5": ("unsup_cpu.yaml", {"steps_per_generation": 4, "learning_rate": 2e-5}),
}

FIELDS = ["name", "recipe", "overrides", "minutes_budget", "train_minutes", "steps", "rollouts",
          "dev_pairs", "dev_spearman_rationale", "dev_spearman_no_rationale", "dev_rationale_length",
          "dev_truncation_rate", "last_reward", "last_margin", "peak_rss_mib", "finished_utc",
          "rollouts_per_minute", "time_share", "gen_right", "gen_regressions", "perplexity", "perplexity_change",
          "generation_kept"]


def dev_scores(model_path: str, system_prompt: str | None, max_new_tokens: int, limit: int, cache: bool) -> dict:
    from dataclasses import replace

    from grace_trl.aliases import resolve_model_name
    from grace_trl.encoder import GRACEEncoder
    from grace_trl.evaluation.evaluators import STSEvaluator
    from grace_trl.settings import GRACESettings

    settings = None
    if system_prompt is not None:  # the checkpoint's settings with another prompt; the encoder is built with them
        settings = replace(GRACESettings.load(resolve_model_name(model_path)) or GRACESettings(),
                           system_prompt=system_prompt)
    encoder = GRACEEncoder.from_pretrained(model_path, device="cpu", cache_dir=str(CACHE) if cache else None,
                                           settings=settings)
    evaluator = STSEvaluator.from_sts_benchmark(None, split="dev", limit=limit, seed=0, without_rationale=True,
                                                max_new_tokens=max_new_tokens, batch_size=64,
                                                show_progress_bar=True)
    return evaluator(encoder)


def generation_row(model_path: str) -> dict:
    """The generation check of a run's checkpoint against the base model (whose result is cached)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from generation_report import check_model, reference_result

    from grace_trl.evaluation.generation_check import generation_kept

    ref = reference_result("smollm2-135m")
    r = check_model(model_path, reference=ref)
    return {"gen_right": f"{r['n_correct']}/{r['n_questions']}",
            "gen_regressions": f"{len(r['regressions'])}/{r['reference_correct']}",
            "perplexity": fmt(r["perplexity"]), "perplexity_change": f"{100 * r['perplexity_change']:+.1f}%",
            "generation_kept": "yes" if generation_kept(r) else "no"}


def write_tables(rows: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    md = ["# Recipe search (SmolLM2-135M, CPU, STS-B dev subset)", "",
          "Generated by `benchmarks/recipe_search.py`; dev split only (seeded subset, seed 0). "
          "Spearman x100 of cosine vs gold; rationale length in tokens; truncation = share of dev rationales "
          "cut at the length limit. Budget = wall clock on the shared 2-core machine (other jobs were running). "
          "Each row names its recipe file and spells out every override against that file as it is now "
          "(`hybrid_cpu.yaml`: the earlier CPU default, GRACE + InfoNCE on 300 triples; `sup_full_cpu.yaml`: pure "
          "GRACE, full fine-tuning, "
          "on 6,337 triples; `default` is the recipe as it stood before the first search). "
          "Dev evaluations during training are off unless the overrides say otherwise. "
          "`tau=1e6 truncation_penalty=0` makes every reward ~0 (no policy-gradient signal): the InfoNCE term alone. "
          "rollouts/min and the time share (generation with fused anchors / scoring: embedding, rewards and TRL's "
          "old log-probabilities / evaluation / training) come from the run's `timing.json`. Generation check: 60 "
          "fixed questions with one-word answers (greedy); regressions = questions the base model answers right "
          "and the run gets wrong; kept = at most 5% of those lost and perplexity within +2% of the base model's.",
          "",
          "| name | recipe | overrides | budget min | train min | optimiser steps | rollouts generated "
          "| rollouts/min | time share | dev Spearman (rationale) | dev Spearman (no rationale) "
          "| rationale len | truncated | last reward | generation check: right, regressions, perplexity change, kept "
          "| peak RSS MiB |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        r = {k: (r.get(k) or "") for k in FIELDS}
        gen = (f"{r['gen_right']}, {r['gen_regressions']} lost, {r['perplexity_change']}, {r['generation_kept']}"
               if r["gen_right"] else "")
        md.append("| {name} | {recipe} | `{overrides}` | {minutes_budget} | {train_minutes} | {steps} | {rollouts} | "
                  "{rollouts_per_minute} | {time_share} | "
                  "{dev_spearman_rationale} | {dev_spearman_no_rationale} | {dev_rationale_length} | "
                  "{dev_truncation_rate} | {last_reward} | ".format(**r) + gen + " | {peak_rss_mib} |".format(**r))
    (RESULTS / "recipe_search.md").write_text("\n".join(md) + "\n")


def read_rows() -> list[dict]:
    path = RESULTS / "recipe_search.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def append_row(row: dict) -> None:
    rows = read_rows() + [{k: row.get(k, "") for k in FIELDS}]
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "recipe_search.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    write_tables(rows)


def fmt(x, nd=2):
    return "" if x is None else f"{x:.{nd}f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", nargs="*", default=[], help="configuration names to run in order")
    p.add_argument("--base", action="store_true", help="score the untrained model under the recipe's prompt")
    p.add_argument("--list", action="store_true")
    p.add_argument("--eval-during-training", action="store_true",
                   help="keep the recipe's dev evaluations during training (they count against --minutes)")
    p.add_argument("--minutes", type=float, default=8.0, help="training budget per run (wall clock)")
    p.add_argument("--dev-pairs", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=None, help="dev rationale length (default: the run's)")
    p.add_argument("--extra", default="", help="extra CLI overrides for every run, e.g. '--seed 1'")
    args = p.parse_args(argv)
    if args.list:
        for name, (recipe, ov) in CONFIGS.items():
            print(f"{name:24s} {recipe:16s} {ov}")
        return 0
    import yaml

    if args.base:
        recipe = yaml.safe_load(BASE_RECIPE.read_text())
        gen = generation_row("smollm2-135m")
        n_tok = args.max_new_tokens or recipe["max_completion_length"]
        start = time.time()
        s = dev_scores("smollm2-135m", recipe["system_prompt"], n_tok, args.dev_pairs, cache=True)
        append_row({"name": "base (untrained)", "recipe": "-", "overrides": f"max_new_tokens={n_tok}",
                    "minutes_budget": 0, "train_minutes": 0, "steps": 0, "rollouts": 0,
                    "dev_pairs": args.dev_pairs, "dev_spearman_rationale": fmt(s["spearman"]),
                    "dev_spearman_no_rationale": fmt(s["spearman_no_rationale"]),
                    "dev_rationale_length": fmt(s.get("rationale_length"), 1),
                    "dev_truncation_rate": fmt(s.get("truncation_rate")), "finished_utc": time.strftime("%H:%M"),
                    **gen})
        print(json.dumps(s), f"{time.time() - start:.0f}s")
    for name in args.run:
        recipe_file, overrides = CONFIGS[name]
        out = ROOT / "outputs" / "search" / name
        cmd = [sys.executable, "-m", "grace_trl.cli", "train", "--config", str(BASE_RECIPE.parent / recipe_file),
               "--output_dir", str(out), "--max_steps", "100000", "--save_strategy", "no",
               "--num_sample_rationales", "1", "--max_train_minutes", str(args.minutes)]
        if not args.eval_during_training:  # the budget is wall clock: evaluations would take training time
            cmd += ["--eval_strategy", "no", "--eval_on_start", "false"]
        else:
            overrides = {**overrides, "eval_strategy": "steps"}
        cmd += ["--generation_check", "false"]  # scored below, against the cached base result
        for k, v in overrides.items():
            cmd += [f"--{k}", str(v)]
        cmd += args.extra.split()
        print("+", " ".join(cmd), flush=True)
        shutil.rmtree(out, ignore_errors=True)
        start = time.time()
        subprocess.run(cmd, check=True)
        minutes = (time.time() - start) / 60
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        with (out / "training_curves.csv").open() as f:
            curve = [r for r in csv.DictReader(f) if r.get("reward")]
        settings = json.loads((out / "grace_config.json").read_text())
        recipe = yaml.safe_load((BASE_RECIPE.parent / recipe_file).read_text())
        per_step = int(overrides.get("per_device_train_batch_size", recipe["per_device_train_batch_size"]))
        # reward rows are logged once per generation, which covers steps_per_generation micro-batches
        spg = int(overrides.get("steps_per_generation", recipe.get("steps_per_generation") or 1))
        n_tok = args.max_new_tokens or settings["max_new_tokens"]
        s = dev_scores(str(out), None, n_tok, args.dev_pairs, cache=False)
        gen = generation_row(str(out))
        timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").exists() else {}
        tail = curve[-10:]
        mean = lambda key: sum(float(r[key]) for r in tail if r.get(key)) / max(1, sum(1 for r in tail if r.get(key)))  # noqa: E731
        append_row({"name": name, "recipe": recipe_file,
                    "overrides": " ".join([f"{k}={v}" for k, v in overrides.items()] + args.extra.split()),
                    "minutes_budget": args.minutes, "train_minutes": fmt(minutes, 1),
                    "steps": int(curve[-1]["step"]) if curve else 0,  # optimiser steps
                    "rollouts": timing.get("rollouts", len(curve) * per_step * spg), "dev_pairs": args.dev_pairs,
                    "dev_spearman_rationale": fmt(s["spearman"]),
                    "dev_spearman_no_rationale": fmt(s["spearman_no_rationale"]),
                    "dev_rationale_length": fmt(s.get("rationale_length"), 1),
                    "dev_truncation_rate": fmt(s.get("truncation_rate")),
                    "last_reward": fmt(mean("reward")), "last_margin": fmt(mean("grace/margin"), 3),
                    "peak_rss_mib": f"{rss:.0f}", "finished_utc": time.strftime("%H:%M"),
                    "rollouts_per_minute": timing.get("rollouts_per_minute", ""),
                    "time_share": " ".join(f"{k[:3]}={v:.2f}" for k, v in timing.get("share", {}).items()),
                    **gen})
        print(name, json.dumps(s), json.dumps(gen), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
