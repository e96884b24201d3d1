"""Rationale generation throughput: vLLM vs HF ``generate`` on the same GRACE prompts, in one run.

Three measurements, HF first then vLLM, each reported as a vLLM/HF ratio:

* ``rationales`` – one sample per prompt at T = 1.0;
* ``rollouts``   – GRACE's trained rollouts: ``--G`` samples per prompt at T = 1.0 (HF
  ``num_return_sequences``, vLLM ``n``), on ``--num-prompts // --G`` prompts;
  both write exactly ``--max-new-tokens`` tokens per sequence (EOS ignored) so they do the same work;
* ``encode``     – ``GRACEEncoder.encode`` (greedy rationale, EOS honoured, then pooling with the HF
  model) with ``backend="hf"`` vs ``backend="vllm"``, no cache: texts/s.

Run it in the vLLM environment (scripts/setup_vllm_env.sh); on CPU the vLLM CPU variables below are
applied unless set.

    python benchmarks/bench_vllm_vs_hf.py [--num-prompts 32] [--max-new-tokens 64] [--G 4]
        [--dtype bfloat16] [--hf-batch-size 32] [--model smollm2-135m] [--repeats 1]
        [--sections rationales,rollouts,encode]
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

from grace_trl.aliases import resolve_model_name  # noqa: E402
from grace_trl.prompts import PromptEncoder  # noqa: E402

SENTENCES = Path(__file__).resolve().parents[1] / "grace_trl" / "data" / "sentences_sample.txt"


def load_prompts(tokenizer, n: int) -> list[list[int]]:
    texts = [t.strip() for t in SENTENCES.read_text(encoding="utf-8").splitlines() if t.strip()]
    if len(texts) < n:
        raise ValueError(f"{SENTENCES} has {len(texts)} sentences, fewer than --num-prompts {n}")
    encode = PromptEncoder(tokenizer)
    return [encode(t).input_ids for t in texts[:n]]


def bench_hf(model_path, dtype, prompts, max_new_tokens, batch_size, pad_id, repeats, n=1):
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
                                 pad_token_id=pad_id, num_return_sequences=n)
        return (out.shape[1] - width) * out.shape[0]

    run(prompts[:2])  # warm-up (allocations, kernels)
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = 0
        step = max(1, batch_size // n)  # batch_size counts sequences, as vLLM's batch does
        for b in tqdm(range(0, len(prompts), step), desc="HF generate", leave=False):
            tokens += run(prompts[b:b + step])
        elapsed = time.perf_counter() - t0
        best = (tokens, elapsed) if best is None or elapsed < best[1] else best
    model = None  # release the weights before the next backend loads
    return best


def bench_vllm(gen, prompts, max_new_tokens, repeats, n=1):
    from vllm import SamplingParams

    params = SamplingParams(n=n, temperature=1.0, top_p=1.0, top_k=0, max_tokens=max_new_tokens, ignore_eos=True,
                            detokenize=False)
    inputs = [{"prompt_token_ids": p} for p in prompts]
    gen.llm.generate(inputs[:2], sampling_params=params, use_tqdm=False)  # warm-up
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = gen.llm.generate(inputs, sampling_params=params, use_tqdm=True)
        elapsed = time.perf_counter() - t0
        tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        best = (tokens, elapsed) if best is None or elapsed < best[1] else best
    return best


def bench_encode(model, backend, texts, max_new_tokens, batch_size, dtype):
    """Texts/s of ``GRACEEncoder.encode`` with rationales (no cache); returns (texts, seconds, tokens)."""
    from grace_trl.encoder import GRACEEncoder

    kwargs = ({"backend_kwargs": {"dtype": str(dtype).replace("torch.", ""), "max_model_len": 1024}}
              if backend == "vllm" else {})
    # same dtype for both: generation and pooling both run in it
    enc = GRACEEncoder.from_pretrained(model, backend=backend, generation_batch_size=batch_size, dtype=dtype, **kwargs)
    enc.encode(texts[:2], batch_size=batch_size, max_new_tokens=8, show_progress_bar=False)  # warm-up
    t0 = time.perf_counter()
    _, rationales = enc.encode(texts, batch_size=batch_size, max_new_tokens=max_new_tokens, return_rationales=True,
                               show_progress_bar=True)
    elapsed = time.perf_counter() - t0
    tokens = sum(len(r.token_ids) for r in rationales)
    if hasattr(enc.generator, "close"):
        enc.generator.close()
    del enc
    return len(texts), elapsed, tokens


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--G", type=int, default=4, help="samples per prompt in the rollouts section")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    p.add_argument("--hf-batch-size", type=int, default=32)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=1, help="timed repeats per backend; the fastest is reported")
    p.add_argument("--sections", default="rationales,rollouts,encode")
    args = p.parse_args(argv)
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = set(sections) - {"rationales", "rollouts", "encode"}
    if unknown:
        p.error(f"unknown --sections {sorted(unknown)}; choose from rationales, rollouts, encode")

    from transformers import AutoTokenizer

    model_path = resolve_model_name(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = load_prompts(tokenizer, args.num_prompts)
    group_prompts = prompts[: max(1, args.num_prompts // args.G)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dtype = getattr(torch, args.dtype)
    rows = []  # (section, backend, units, seconds, unit name)

    # HF first: the in-process vLLM engine pins OpenMP threads (VLLM_CPU_OMP_THREADS_BIND), which slows
    # torch ops run in the same process afterwards and would understate HF.
    if "rationales" in sections:
        rows.append(("rationales", "hf", *bench_hf(model_path, dtype, prompts, args.max_new_tokens,
                                                   args.hf_batch_size, pad_id, args.repeats), "tok"))
    if "rollouts" in sections:
        rows.append(("rollouts", "hf", *bench_hf(model_path, dtype, group_prompts, args.max_new_tokens,
                                                 args.hf_batch_size, pad_id, args.repeats, n=args.G), "tok"))
    texts = [t.strip() for t in SENTENCES.read_text(encoding="utf-8").splitlines() if t.strip()][: args.num_prompts]
    if "encode" in sections:
        n, sec, tok = bench_encode(args.model, "hf", texts, args.max_new_tokens, args.hf_batch_size, dtype)
        rows.append(("encode", "hf", n, sec, "texts"))
        hf_encode_tokens = tok
    if "rationales" in sections or "rollouts" in sections:
        from grace_trl.vllm_backend import VLLMRationaleGenerator

        t0 = time.perf_counter()
        gen = VLLMRationaleGenerator(model_path, max_model_len=args.max_model_len, dtype=args.dtype, seed=0)
        startup = time.perf_counter() - t0
        if "rationales" in sections:
            rows.append(("rationales", "vllm", *bench_vllm(gen, prompts, args.max_new_tokens, args.repeats), "tok"))
        if "rollouts" in sections:
            rows.append(("rollouts", "vllm", *bench_vllm(gen, group_prompts, args.max_new_tokens, args.repeats,
                                                         n=args.G), "tok"))
        gen.close()
        del gen
        print(f"vLLM engine start-up: {startup:.1f} s")
    if "encode" in sections:
        n, sec, tok = bench_encode(args.model, "vllm", texts, args.max_new_tokens, args.hf_batch_size, dtype)
        rows.append(("encode", "vllm", n, sec, "texts"))
        vllm_encode_tokens = tok

    print(f"\nmodel={args.model} dtype={args.dtype} prompts={len(prompts)} G={args.G} "
          f"max_new_tokens={args.max_new_tokens} mean_prompt_len={sum(map(len, prompts)) / len(prompts):.0f} "
          f"torch_threads={torch.get_num_threads()}")
    print("| section | backend | units | seconds | units/s |")
    print("|---|---|---|---|---|")
    for sec_name, backend, units, seconds, unit in rows:
        print(f"| {sec_name} | {backend} | {units} {unit} | {seconds:.2f} | {units / seconds:.1f} |")
    for name in sections:
        r = {backend: units / seconds for sec_name, backend, units, seconds, _ in rows if sec_name == name}
        if "hf" in r and "vllm" in r:
            print(f"{name}: vLLM / HF = {r['vllm'] / r['hf']:.2f}x")
    if "encode" in sections:
        print(f"encode: generated rationale tokens hf={hf_encode_tokens} vllm={vllm_encode_tokens} "
              "(greedy; they differ where the backends' kernels break near-ties differently)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
