"""Rollout decode throughput on this CPU: batch shape and precision (fp32 vs bf16 autocast vs bf16 weights).

``--precisions lora lora-merged`` times an fp32 policy with a rank-``--lora-r`` adapter on every linear layer,
decoding through the adapter or through :func:`grace_trl.generation.lora_merged` (merge and exact restore
inside the timed call, as the trainer does per rollout batch).

Generation dominates a GRACE step on CPU, so this measures the one call that produces rollouts:
``model.generate`` on left-padded chat prompts of real sentences, sampling at temperature 1 with
``min_new_tokens = max_new_tokens`` so every row decodes exactly that many tokens and tokens/s is
well defined. One warm-up call per setting is not timed. Compare with a serving engine's decode rate
on the same model (``benchmarks/bench_vllm_vs_hf.py``).

    python benchmarks/bench_decode.py [--batch-sizes 8 16 32 64] [--new-tokens 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16-autocast", "bf16-weights")
LORA = ("lora", "lora-merged")


def main(argv=None) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grace_trl.aliases import resolve_model_name
    from grace_trl.data import load_grace_dataset
    from grace_trl.generation import lora_merged
    from grace_trl.prompts import DEFAULT_SYSTEM_PROMPT

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS + LORA)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)

    path = resolve_model_name(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    texts = [r["query"] for r in load_grace_dataset("sample-nli", limit=max(args.batch_sizes))]
    prompts = [tok.apply_chat_template([{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                        {"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
               for t in texts]
    results = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.new_tokens} new tokens per row")
    print("| precision | batch | s per call | generated tokens/s | ms per decode step |")
    print("|---|---|---|---|---|")
    for precision in args.precisions:
        dtype = torch.bfloat16 if precision == "bf16-weights" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if precision in LORA:
            from peft import LoraConfig, get_peft_model

            torch.manual_seed(0)  # a trained-looking adapter: random B (a fresh one is all zeros)
            model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r,
                                                     target_modules="all-linear", init_lora_weights=False))
        model.eval()
        for bs in args.batch_sizes:
            batch = tok(prompts[:bs], return_tensors="pt", padding=True)
            kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=True,
                      temperature=1.0, top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id)
            times = []
            for rep in range(args.repeats + 1):
                torch.manual_seed(rep)
                start = time.perf_counter()
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                            enabled=precision == "bf16-autocast"), \
                        lora_merged(model, enabled=precision == "lora-merged"):
                    out = model.generate(**batch, **kw)
                if rep:  # the first call warms up
                    times.append(time.perf_counter() - start)
            new = out.shape[1] - batch["input_ids"].shape[1]
            s = min(times)
            row = {"precision": precision, "batch": bs, "seconds": s, "tokens_per_s": bs * new / s,
                   "ms_per_step": 1000 * s / new}
            results.append(row)
            print(f"| {precision} | {bs} | {s:.2f} | {row['tokens_per_s']:.0f} | {row['ms_per_step']:.0f} |",
                  flush=True)
        del model
    if args.json:
        Path(args.json).write_text(json.dumps({"new_tokens": args.new_tokens, "threads": torch.get_num_threads(),
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
