"""What sentence-transformers' ``prompt=`` does to a GRACE model's scores, against the usual convention.

For most sentence-transformers models ``encode(texts, prompt=P)`` embeds ``P + text``. A GRACE model puts
``P`` in place of its instruction inside the chat template instead (``GRACEEncoder.encode(prompt=...)``
and the sentence-transformers module alike), so the user content becomes ``P + "\\n" + text`` and the
system prompt stays. This script measures both on the first ``--pairs`` pairs of the STS-B *dev* split,
embedded without rationales (the fast path that ``load_sentence_transformer`` serves):

* (a) no prompt: the checkpoint's own instruction (none for the embedded model);
* (b) ``prompt=P`` through the sentence-transformers API, as GRACE implements it;
* (c) ``P`` prefixed to every text, the convention of most sentence-transformers models.

It prints Spearman x100 per row, with paired bootstrap intervals (``scipy.stats.bootstrap``, ``paired=True``,
over pairs) of (b) - (c) and (b) - (a), and writes ``benchmarks/results/prompt_convention.md``. It also checks
that (b) through sentence-transformers equals ``GRACEEncoder.encode(prompt=P, use_rationale=False)``.

    python benchmarks/prompt_convention.py                      # smollm2-135m, 100 dev pairs, two prompts
    python benchmarks/prompt_convention.py --prompt "query: " --pairs 200
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from scipy.stats import bootstrap, spearmanr

ROOT = Path(__file__).resolve().parents[1]
# a short prefix in the E5 style and a BGE-style instruction ending in ": ", as sentence-transformers models use them
DEFAULT_PROMPTS = ("query: ", "Represent this sentence for searching relevant passages: ")


def cosines(vectors: dict[str, np.ndarray], pairs) -> np.ndarray:
    """The cosine of each pair (the vectors are normalised)."""
    return np.array([float(np.dot(vectors[a], vectors[b])) for a, b, _ in pairs])


def rho(cos: np.ndarray, gold: np.ndarray) -> float:
    return 100.0 * float(spearmanr(cos, gold).statistic)


def paired_difference(cos_x: np.ndarray, cos_y: np.ndarray, gold: np.ndarray, resamples: int) -> tuple:
    """Spearman x100 of x minus that of y, with a 95% percentile interval resampling the pairs together."""
    def stat(x, y, g):
        return rho(x, g) - rho(y, g)

    res = bootstrap((cos_x, cos_y, gold), stat, paired=True, n_resamples=resamples, confidence_level=0.95,
                    method="percentile", random_state=0, vectorized=False)
    return stat(cos_x, cos_y, gold), res.confidence_interval.low, res.confidence_interval.high


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model path or alias (default: smollm2-135m)")
    p.add_argument("--prompt", action="append", default=None,
                   help=f"prompt to compare (repeatable; default: {' and '.join(map(repr, DEFAULT_PROMPTS))})")
    p.add_argument("--pairs", type=int, default=100, help="the first N pairs of the dev split (default: 100)")
    p.add_argument("--data-dir", default=None, help="folder holding STSBenchmark/ (default: ../shared/data)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "prompt_convention.md"),
                   help="Markdown report (default: benchmarks/results/prompt_convention.md)")
    args = p.parse_args(argv)

    import torch

    from grace_trl.encoder import GRACEEncoder
    from grace_trl.evaluation.loaders import load_sts_benchmark
    from grace_trl.st_module import sentence_transformer

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    prompts = args.prompt or list(DEFAULT_PROMPTS)
    pairs = load_sts_benchmark(args.data_dir, split="dev")[: args.pairs]
    sentences = sorted({s for a, b, _ in pairs for s in (a, b)})
    start = time.time()
    encoder = GRACEEncoder.from_pretrained(args.model, device="cpu", dtype="float32")
    st = sentence_transformer(encoder.model, encoder.tokenizer, encoder.settings)

    def st_vectors(texts, **kwargs) -> dict[str, np.ndarray]:
        out = st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False, **kwargs)
        return dict(zip(sentences, out))

    gold = np.array([score for _, _, score in pairs])
    plain = cosines(st_vectors(sentences), pairs)
    rows = [(f"(a) no prompt (the checkpoint's instruction: {encoder.settings.instruction!r})", "", rho(plain, gold))]
    print(f"{rows[0][0]}: {rows[0][2]:.2f}", flush=True)
    differences = []
    largest_gap = 0.0
    for prompt in prompts:
        as_grace = st_vectors(sentences, prompt=prompt)
        direct = encoder.encode(sentences, batch_size=args.batch_size, use_rationale=False, prompt=prompt,
                                show_progress_bar=False)
        largest_gap = max(largest_gap, float(np.abs(np.stack([as_grace[s] for s in sentences]) - direct).max()))
        grace_cos, prefixed_cos = cosines(as_grace, pairs), cosines(st_vectors([prompt + s for s in sentences]), pairs)
        for label, cos in (("(b) `prompt=` as GRACE implements it (the prompt replaces the instruction)", grace_cos),
                           ("(c) the prompt prefixed to the text (most sentence-transformers models)", prefixed_cos)):
            rows.append((label, prompt, rho(cos, gold)))
            print(f"{label}, prompt {prompt!r}: {rows[-1][2]:.2f}", flush=True)
        for name, other in (("(b) - (c)", prefixed_cos), ("(b) - (a)", plain)):
            differences.append((name, prompt, *paired_difference(grace_cos, other, gold, args.resamples)))
            print(f"{name}, prompt {prompt!r}: {differences[-1][2]:+.2f} "
                  f"[{differences[-1][3]:+.2f}, {differences[-1][4]:+.2f}]", flush=True)
    seconds = time.time() - start
    # sentence-transformers and GRACEEncoder embed alike (float32 CPU, batches padded differently)
    assert largest_gap < 1e-4, f"prompt= through sentence-transformers differs from GRACEEncoder by {largest_gap}"

    system = encoder.settings.system_prompt
    lines = [
        "# sentence-transformers `prompt=` on a GRACE model: measured",
        "",
        f"`{args.model}` without rationales (pooling `{encoder.settings.pooling}`), the first {len(pairs)} pairs of "
        f"the STS-B dev split ({len(sentences)} sentences), Spearman x100 of cosine similarity. System prompt: "
        f"{'none' if system is None else repr(system)}. Written by `benchmarks/prompt_convention.py` in "
        f"{seconds:.0f} s on CPU.",
        "",
        "| embedding | prompt | Spearman x100 |",
        "|---|---|---|",
        *[f"| {label} | {repr(prompt) if prompt else '–'} | {value:.2f} |" for label, prompt, value in rows],
        "",
        f"Paired differences (95% percentile bootstrap over the pairs, {args.resamples} resamples):",
        "",
        "| difference | prompt | Spearman x100 | 95% interval |",
        "|---|---|---|---|",
        *[f"| {name} | {prompt!r} | {d:+.2f} | [{lo:+.2f}, {hi:+.2f}] |" for name, prompt, d, lo, hi in differences],
        "",
        "(b) puts the prompt where GRACE's instruction goes: the user turn is the prompt, a newline, then the text. "
        "(c) gives the prompt and text as one string, as `encode(prompt=...)` does for most sentence-transformers "
        "models. With no instruction in the checkpoint, the two differ only in that newline; the prompt's tokens "
        "are inside the pooled span in both. A checkpoint trained with an `instruction` loses it under (b) and "
        "keeps it in front of the prefixed text under (c). "
        f"(b) through sentence-transformers equals `GRACEEncoder.encode(prompt=..., use_rationale=False)` "
        f"(largest difference {largest_gap:.1e}).",
        "",
    ]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
