"""Evaluate a model with mteb, offline (local task copies) or on official tasks (needs the Hub).

    python examples/evaluate_mteb.py [--model smollm2-135m] [--limit 50] [--official]
"""

import argparse
import os

import mteb

from grace_trl.evaluation import get_local_task
from grace_trl.evaluation.mteb_wrapper import GRACEMTEBEncoder

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--limit", type=int, default=50, help="reduced, seeded subsample (not leaderboard-comparable)")
parser.add_argument("--max-new-tokens", type=int, default=32)
parser.add_argument("--no-rationale", action="store_true")
parser.add_argument("--official", action="store_true", help="use mteb.get_tasks (downloads from the Hub)")
parser.add_argument("--output-dir", default="mteb_out")
args = parser.parse_args()

if not args.official:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
model = GRACEMTEBEncoder.from_pretrained(args.model, use_rationale=not args.no_rationale,
                                         max_new_tokens=args.max_new_tokens, cache_dir=f"{args.output_dir}/rationales")
if args.official:
    tasks = mteb.get_tasks(tasks=["STSBenchmark", "SciFact", "Banking77Classification"])
else:
    tasks = [get_local_task(name, limit=args.limit) for name in ("STSBenchmark", "SciFact", "Banking77Classification")]
results = mteb.evaluate(model, tasks, cache=mteb.ResultCache(args.output_dir), overwrite_strategy="always",
                        encode_kwargs={"batch_size": 16})
for task_result in results.task_results:
    print(f"{task_result.task_name}: {task_result.get_score():.4f}")
print(f"mteb result files under {args.output_dir}/results/")
