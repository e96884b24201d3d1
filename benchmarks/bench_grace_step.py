"""Cost of GRACE's embedding reward relative to the same GRPO step without it.

Three variants, each in a fresh process (so peak RSS is per variant), same model, data, seed,
group size and rationale length, learning rate 0 so every variant samples identical rollouts:

* ``grace``        – the full GRACE step (anchors + pooled embeddings + contrastive reward); anchors are
                     sampled in the rollouts' generate call (``fuse_anchor_generation``, the default)
* ``grace_unfused`` – the same with a second, separate anchor decode (``fuse_anchor_generation=False``)
* ``const_hook``   – GRACE with ``compute_embeddings`` replaced by constant vectors (anchors are still
                     generated): the ratio grace/const_hook is the embedding hook's overhead
* ``grpo_const``   – plain ``trl.GRPOTrainer`` with a constant reward (no anchors, no embeddings):
                     the ratio grace/grpo_const is GRACE's whole overhead over GRPO

Step times of separate runs vary by a few percent, about the size of the hook itself, so the
``grace`` run also times ``compute_embeddings`` inside each step; step / (step - hook) is the same
ratio measured within one run.

Usage: python benchmarks/bench_grace_step.py [--steps 4] [--warmup 1] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see grace_trl/__init__.py
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _run(variant: str, args: dict, queue) -> None:
    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from grace_trl import GRACEConfig
    from grace_trl.aliases import resolve_model_name
    from grace_trl.data import add_prompts, load_grace_dataset
    from grace_trl.trainer import GRACETrainer

    torch.manual_seed(0)
    model = resolve_model_name(args["model"])
    common = dict(output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False, report_to="none", seed=0,
                  num_generations=args["G"], per_device_train_batch_size=args["G"] * args["groups"],
                  max_completion_length=args["max_len"], max_steps=args["warmup"] + args["steps"],
                  learning_rate=0.0, logging_steps=1, save_strategy="no", beta=0.0, scale_rewards="none",
                  loss_type="dapo", temperature=1.0)
    data = load_grace_dataset("sample-nli", limit=200)
    prompt = args["system_prompt"]

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.hook_s, self._t = [], [], 0.0

            self.gen_s = []

        def on_step_begin(self, *a, **k):
            self.hook_s.append(0.0)
            self.gen_s.append(0.0)
            self._t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self._t)

    timer = Timer()
    if variant == "grpo_const":
        cfg = GRPOConfig(**common)

        def constant_reward(completions, **kw):
            return [0.0] * len(completions)

        trainer = GRPOTrainer(model, reward_funcs=constant_reward, args=cfg,
                              train_dataset=add_prompts(data, "supervised", prompt), callbacks=[timer])
    else:
        cfg = GRACEConfig(**common, system_prompt=prompt, reward_variant="effective",
                          fuse_anchor_generation=variant != "grace_unfused")

        class TimedHook(GRACETrainer):
            """Times the real hook and the generation inside the step: direct, low-noise measures."""

            def compute_embeddings(self, model, sequences, spans):
                t0 = time.perf_counter()
                out = super().compute_embeddings(model, sequences, spans)
                timer.hook_s[-1] += time.perf_counter() - t0
                return out

            def _generate_single_turn(self, *a, **k):
                t0 = time.perf_counter()
                out = super()._generate_single_turn(*a, **k)
                timer.gen_s[-1] += time.perf_counter() - t0
                return out

            def _generate_anchor_completions(self, *a, **k):
                t0 = time.perf_counter()
                out = super()._generate_anchor_completions(*a, **k)
                timer.gen_s[-1] += time.perf_counter() - t0
                return out

        cls = TimedHook
        if variant == "const_hook":
            class ConstantHook(GRACETrainer):
                def compute_embeddings(self, model, sequences, spans):
                    d = model.config.hidden_size
                    return torch.nn.functional.normalize(torch.ones(len(sequences), d), dim=-1)

            cls = ConstantHook
        trainer = cls(model, args=cfg, train_dataset=data, callbacks=[timer])
    trainer.train()
    steps = timer.times[args["warmup"]:]
    hooks = timer.hook_s[args["warmup"]:]
    gens = timer.gen_s[args["warmup"]:]
    queue.put({"variant": variant, "step_s": steps, "mean_step_s": statistics.mean(steps),
               "hook_s": hooks, "mean_hook_s": statistics.mean(hooks) if hooks else 0.0,
               "mean_generation_s": statistics.mean(gens) if gens else 0.0,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--G", type=int, default=4)
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--max-len", dest="max_len", type=int, default=48)
    p.add_argument("--system-prompt", default="Explain the text briefly: reasoning in <think></think> tags, "
                                              "then a one-sentence summary.")
    p.add_argument("--json", help="also write the figures to this file")
    a = vars(p.parse_args(argv))
    ctx = mp.get_context("spawn")
    results = {}
    for variant in ("grace", "grace_unfused", "const_hook", "grpo_const"):
        q = ctx.Queue()
        proc = ctx.Process(target=_run, args=(variant, a, q))
        proc.start()
        proc.join()
        if proc.exitcode != 0 or q.empty():
            raise RuntimeError(f"benchmark variant {variant!r} failed (exit code {proc.exitcode}); "
                               "see the error above")
        results[variant] = q.get()
        print(f"{variant:<11} mean step {results[variant]['mean_step_s']:.2f} s  "
              f"steps {[round(s, 2) for s in results[variant]['step_s']]}  peak RSS "
              f"{results[variant]['peak_rss_mib']:.0f} MiB", flush=True)
    g, h, b = (results[k]["mean_step_s"] for k in ("grace", "const_hook", "grpo_const"))
    print()
    print("| variant | mean step (s) | generation in step (s) | peak RSS (MiB) |")
    print("|---|---|---|---|")
    for k, v in results.items():
        gen = f"{v['mean_generation_s']:.2f}" if v["mean_generation_s"] else "-"
        print(f"| {k} | {v['mean_step_s']:.2f} | {gen} | {v['peak_rss_mib']:.0f} |")
    hook = results["grace"]["mean_hook_s"]
    print(f"\nembedding-hook overhead  grace / const_hook = {g / h:.3f}  (target <= 1.10; two runs, step noise ~5%)")
    print(f"                         in-run: hook {hook:.2f} s of a {g:.2f} s step -> step / (step - hook) = "
          f"{g / (g - hook):.3f}")
    u = results["grace_unfused"]["mean_step_s"]
    print(f"total GRACE overhead     grace / grpo_const = {g / b:.3f}  (target <= 1.15; anchors fused)")
    print(f"                         grace_unfused / grpo_const = {u / b:.3f}  (separate anchor decode)")
    if a["json"]:
        with open(a["json"], "w") as f:
            json.dump({"config": a, "results": results, "hook_ratio": g / h, "hook_ratio_in_run": g / (g - hook),
                       "total_ratio": g / b, "total_ratio_unfused": u / b}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
