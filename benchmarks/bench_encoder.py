"""Encoding throughput of GRACEEncoder on the CPU default (embedded SmolLM2-135M-Instruct).

Prints texts/s and generated tokens/s for a cold rationale cache, the same for a warm cache
(generation skipped, pooling only), their ratio, and the peak resident memory of the process.

    python benchmarks/bench_encoder.py [--n 16] [--max-new-tokens 32] [--batch-size 16] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grace_trl.encoder import GRACEEncoder  # noqa: E402
from grace_trl.evaluation.tasks import load_sts_benchmark  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=16, help="number of texts (STSBenchmark test sentences)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        __import__("torch").set_num_threads(args.threads)

    try:
        rows = load_sts_benchmark(args.data_dir)
        texts = [r[0] for r in rows[: args.n]]
    except FileNotFoundError:
        texts = [f"Sentence number {i} about an everyday event in a small town." for i in range(args.n)]
    with tempfile.TemporaryDirectory() as cache_dir:
        t0 = time.perf_counter()
        enc = GRACEEncoder.from_pretrained(args.model, device="cpu", cache_dir=cache_dir)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, rats = enc.encode(texts, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                             return_rationales=True, show_progress_bar=False)
        cold = time.perf_counter() - t0
        gen_tokens = sum(len(r.token_ids) for r in rats)
        truncated = sum(r.truncated for r in rats)
        t0 = time.perf_counter()
        _, warm_rats = enc.encode(texts, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                  return_rationales=True, show_progress_bar=False)
        warm = time.perf_counter() - t0
        assert all(r.cached for r in warm_rats), "warm pass should read every rationale from the cache"
        t0 = time.perf_counter()
        enc.encode(texts, batch_size=args.batch_size, use_rationale=False, show_progress_bar=False)
        plain = time.perf_counter() - t0

    print(f"model {args.model}  texts {len(texts)}  max_new_tokens {args.max_new_tokens}  batch {args.batch_size}  "
          f"torch threads {__import__('torch').get_num_threads()}")
    print(f"load                         {load_s:8.2f} s")
    print(f"cold cache (generate+pool)   {cold:8.2f} s  {len(texts) / cold:8.2f} texts/s  "
          f"{gen_tokens / cold:8.1f} generated tokens/s  ({gen_tokens} tokens, {truncated} truncated)")
    print(f"warm cache (pool only)       {warm:8.2f} s  {len(texts) / warm:8.2f} texts/s")
    print(f"no rationale (pool prompt)   {plain:8.2f} s  {len(texts) / plain:8.2f} texts/s")
    print(f"cold / warm time ratio       {cold / warm:8.1f} x")
    print(f"peak RSS                     {peak_rss_mib():8.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
