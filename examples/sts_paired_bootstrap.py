"""Is model A better than model B on STSBenchmark, or is it sampling noise? A paired bootstrap.

Both models embed the same seeded sample of pairs (the sample `grace-trl eval --limit N` uses);
resampling the pairs with replacement (scipy.stats.bootstrap, paired) gives an interval for the difference
in Spearman × 100.
Point --cache-dir at an eval run's rationale cache to reuse its rationales.

    python examples/sts_paired_bootstrap.py --model-a outputs/smollm2-135m-grace-sup --model-b smollm2-135m \
        --limit 500 --system-prompt-from outputs/smollm2-135m-grace-sup --cache-dir eval_out/rationale_cache
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from grace_trl.encoder import GRACEEncoder
from grace_trl.evaluation.runner import resolve_system_prompt
from grace_trl.evaluation.stats import paired_spearman_difference
from grace_trl.evaluation.tasks import get_local_task


def pair_cosines(path, s1, s2, args, override):
    enc = GRACEEncoder.from_pretrained(path, cache_dir=args.cache_dir)
    prompt = {"system_prompt": override[1]} if override[0] else {}  # the checkpoint's settings stay untouched
    vecs = enc.encode(s1 + s2, max_new_tokens=args.max_new_tokens, use_rationale=not args.no_rationale, **prompt)
    return np.sum(vecs[: len(s1)] * vecs[len(s1):], axis=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-a", required=True)
    p.add_argument("--model-b", required=True)
    p.add_argument("--limit", type=int, default=None,
                   help="pairs sampled as in `grace-trl eval --limit` (all if unset)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--no-rationale", action="store_true")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--system-prompt", default=None, help="system prompt both models use ('' for none)")
    prompt.add_argument("--system-prompt-from", default=None, help="checkpoint whose system prompt both models use")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--resamples", type=int, default=2000)
    args = p.parse_args()

    task = get_local_task("STSBenchmark", data_dir=args.data_dir, limit=args.limit, seed=args.seed)
    task.load_data()
    rows = task.dataset["test"]
    s1, s2 = list(rows["sentence1"]), list(rows["sentence2"])
    gold = np.asarray(rows["score"], dtype=float)
    try:
        override = resolve_system_prompt(args)  # the same rule as `grace-trl eval`
    except ValueError as err:
        raise SystemExit(str(err))
    cos_a = pair_cosines(args.model_a, s1, s2, args, override)
    cos_b = pair_cosines(args.model_b, s1, s2, args, override)

    r = paired_spearman_difference(cos_a, cos_b, gold, n_resamples=args.resamples, seed=args.seed)
    print(f"{r.n} pairs: A {r.score_a:.2f}, B {r.score_b:.2f}, A - B {r.difference:+.2f} "
          f"({r.confidence_level:.0%} bootstrap interval {r.low:+.2f} .. {r.high:+.2f}, "
          f"P(A - B <= 0) = {r.p_not_better:.3f})")


if __name__ == "__main__":
    main()
