"""Rationale generation throughput: vLLM vs HF ``generate`` on the same GRACE prompts, in one run.

Both backends write exactly ``--max-new-tokens`` tokens per prompt (EOS ignored) so that they do the
same work; the ratio of tokens/s is the figure to compare. Run it in the vLLM environment
(scripts/setup_vllm_env.sh); on CPU set the vLLM CPU variables first (defaults below are applied).

    python benchmarks/bench_vllm_vs_hf.py [--num-prompts 32] [--max-new-tokens 64] [--dtype bfloat16]
        [--hf-batch-size 32] [--model smollm2-135m] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-%d" % (max(1, os.cpu_count() or 1) - 1))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from grace_trl.models import resolve_model_name  # noqa: E402
from grace_trl.prompts import PromptEncoder  # noqa: E402

SENTENCES = Path(__file__).resolve().parents[1] / "grace_trl" / "data" / "sentences_sample.txt"


def load_prompts(tokenizer, n: int) -> list[list[int]]:
    texts = [t.strip() for t in SENTENCES.read_text(encoding="utf-8").splitlines() if t.strip()]
    if len(texts) < n:
        raise ValueError(f"{SENTENCES} has {len(texts)} sentences, fewer than --num-prompts {n}")
    encode = PromptEncoder(tokenizer)
    return [encode(t).input_ids for t in texts[:n]]


def bench_hf(model_path, dtype, prompts, max_new_tokens, batch_size, pad_id, repeats):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).eval()

    def run(batch_prompts):
        # Left padding so every row's new tokens start at the same position.
        width = max(len(p) for p in batch_prompts)
        ids = torch.full((len(batch_prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(batch_prompts):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 min_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 pad_token_id=pad_id)
        return (out.shape[1] - width) * len(batch_prompts)

    run(prompts[:2])  # warm-up (allocations, kernels)
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = 0
        for b in tqdm(range(0, len(prompts), batch_size), desc="HF generate", leave=False):
            tokens += run(prompts[b:b + batch_size])
        elapsed = time.perf_counter() - t0
        best = (tokens, elapsed) if best is None or elapsed < best[1] else best
    del model
    return best


def bench_vllm(model_path, dtype, prompts, max_new_tokens, max_model_len, repeats):
    from vllm import SamplingParams

    from grace_trl.vllm_backend import VLLMRationaleGenerator

    t0 = time.perf_counter()
    gen = VLLMRationaleGenerator(model_path, max_model_len=max_model_len, dtype=dtype, seed=0)
    startup = time.perf_counter() - t0
    params = SamplingParams(n=1, temperature=1.0, top_p=1.0, top_k=0, max_tokens=max_new_tokens, ignore_eos=True,
                            detokenize=False)
    inputs = [{"prompt_token_ids": p} for p in prompts]
    gen.llm.generate(inputs[:2], sampling_params=params, use_tqdm=False)  # warm-up
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = gen.llm.generate(inputs, sampling_params=params, use_tqdm=True)
        elapsed = time.perf_counter() - t0
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        best = (tokens, elapsed) if best is None or elapsed < best[1] else best
    # The encoder's own entry point, as a check that it is no slower than the raw engine call.
    t0 = time.perf_counter()
    via_api = gen.generate(prompts, max_new_tokens=max_new_tokens, temperature=1.0, show_progress=False)
    api = (sum(len(c) for c in via_api), time.perf_counter() - t0)
    gen.close()
    return best, startup, api


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    p.add_argument("--hf-batch-size", type=int, default=32)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=1, help="timed repeats per backend; the fastest is reported")
    args = p.parse_args(argv)

    from transformers import AutoTokenizer

    model_path = resolve_model_name(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = load_prompts(tokenizer, args.num_prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dtype = getattr(torch, args.dtype)

    # HF first: the in-process vLLM engine pins OpenMP threads (VLLM_CPU_OMP_THREADS_BIND), which slows
    # torch ops run in the same process afterwards and would understate HF.
    h_tok, h_s = bench_hf(model_path, dtype, prompts, args.max_new_tokens, args.hf_batch_size, pad_id, args.repeats)
    (v_tok, v_s), startup, (a_tok, a_s) = bench_vllm(model_path, args.dtype, prompts, args.max_new_tokens,
                                                     args.max_model_len, args.repeats)

    v_rate, h_rate = v_tok / v_s, h_tok / h_s
    print(f"\nmodel={args.model} dtype={args.dtype} prompts={len(prompts)} max_new_tokens={args.max_new_tokens} "
          f"mean_prompt_len={sum(map(len, prompts)) / len(prompts):.0f} torch_threads={torch.get_num_threads()}")
    print(f"{'backend':<28}{'tokens':>8}{'seconds':>10}{'tok/s':>10}")
    print(f"{'vLLM (LLM.generate)':<28}{v_tok:>8}{v_s:>10.2f}{v_rate:>10.1f}")
    print(f"{'vLLM (generator API, EOS)':<28}{a_tok:>8}{a_s:>10.2f}{a_tok / a_s:>10.1f}")
    print(f"{'HF generate (bs=%d)' % args.hf_batch_size:<28}{h_tok:>8}{h_s:>10.2f}{h_rate:>10.1f}")
    print(f"vLLM / HF tokens/s ratio: {v_rate / h_rate:.2f}x   (vLLM engine start-up: {startup:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
