"""Final STS-B *test* comparison of a GRACE checkpoint with its base model, under one system prompt.

Embeds all 1,379 test pairs (or ``--limit``) with and without rationale for both models, prints and
writes Spearman x100, mean rationale length and truncation for every row, and a paired bootstrap
(``scipy.stats.bootstrap``, ``paired=True``) of GRACE - base with rationale and of GRACE with
rationale - base without. Run it once per chosen recipe: selection happens on dev
(``benchmarks/recipe_search.py``), never here.

    python benchmarks/sts_test_report.py --grace outputs/smollm2-135m-grace-sup --base smollm2-135m
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from scipy.stats import bootstrap, spearmanr

ROOT = Path(__file__).resolve().parents[1]


def embed(path: str, sentences: list[str], use_rationale: bool, system_prompt, max_new_tokens, cache_dir):
    from grace_trl.encoder import GRACEEncoder

    enc = GRACEEncoder.from_pretrained(path, device="cpu", cache_dir=cache_dir)
    out = enc.encode(sentences, batch_size=64, max_new_tokens=max_new_tokens, use_rationale=use_rationale,
                     return_rationales=True, system_prompt=system_prompt)
    return out


def _weights_stamp(path: str) -> list:
    """Size and mtime of the folder's weight files: a retrained checkpoint in the same folder is another row."""
    from grace_trl.aliases import resolve_model_name

    folder = Path(resolve_model_name(path))
    if not folder.is_dir():
        return []
    return sorted([f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in folder.glob("*.safetensors"))


def cached_row_path(rows_cache: str, path: str, *settings) -> Path:
    """Where one model's per-item scores under ``settings`` are kept: named by the model folder, its weight files
    and everything that decides the scores, so a retrained checkpoint or another sample is another row."""
    ident = json.dumps([os.path.abspath(path) if os.path.isdir(path) else path, _weights_stamp(path), *settings])
    return Path(rows_cache) / (hashlib.sha256(ident.encode()).hexdigest()[:24] + ".json")


def report_settings(source: str):
    """The system prompt and rationale length of a GRACE checkpoint or a recipe YAML, for every row of a report."""
    from grace_trl.settings import GRACESettings

    if source.endswith((".yaml", ".yml")):  # a recipe: its prompt and rationale length
        import yaml

        recipe = yaml.safe_load(Path(source).read_text())
        return GRACESettings(system_prompt=recipe["system_prompt"], max_new_tokens=recipe["max_completion_length"])
    settings = GRACESettings.load(source)
    if settings is None:
        raise SystemExit(f"{source}: no grace_config.json (not a GRACE checkpoint); name a recipe with --settings")
    return settings


def main(argv=None) -> int:
    from grace_trl.evaluation.tasks import load_sts_benchmark

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grace", required=True)
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--settings", default=None,
                   help="recipe YAML or GRACE checkpoint whose prompt and rationale length every row uses "
                        "(default: --grace's own); lets a non-GRACE model such as the CL baseline be scored")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--cache-dir", default=str(ROOT / "outputs" / "rationale_cache"))
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--rows-cache", default=str(ROOT / "outputs" / "sts_test_rows"),
                   help="per-pair cosines of each (model, prompt, length, rationale) row, reused by later reports "
                        "(the base model's rows are the same for every checkpoint trained under one prompt)")
    p.add_argument("--base-only", action="store_true", help="embed the base model's rows only (fills the cache)")
    p.add_argument("--no-rationale-only", action="store_true",
                   help="score --grace without rationale only (a model trained as a plain encoder, e.g. CL)")
    p.add_argument("--grace-only", action="store_true",
                   help="embed the checkpoint's rows only (fills the cache; run beside --base-only)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "sts_test.json"))
    args = p.parse_args(argv)

    settings = report_settings(args.settings or args.grace)
    pairs = load_sts_benchmark(args.data_dir, split="test")
    if args.limit:
        pairs = pairs[: args.limit]
    sentences = sorted({s for a, b, _ in pairs for s in (a, b)})
    index = {s: i for i, s in enumerate(sentences)}
    left = np.array([index[a] for a, _, _ in pairs])
    right = np.array([index[b] for _, b, _ in pairs])
    gold = np.array([s for _, _, s in pairs])
    cos, rows = {}, {}
    models = (("base", args.base), ("grace", args.grace))
    if args.base_only or args.grace_only:
        models = models[:1] if args.base_only else models[1:]
    for label, path in models:
        for use_rationale in ((False,) if label == "grace" and args.no_rationale_only else (False, True)):
            key = f"{label}, {'rationale' if use_rationale else 'no rationale'}"
            cached = cached_row_path(args.rows_cache, path, settings.system_prompt, settings.max_new_tokens,
                                     use_rationale, pairs)
            if cached.exists():
                entry = json.loads(cached.read_text())
                cos[key], rows[key] = np.array(entry["cosines"]), entry["row"]
                print(key, "(cached)", json.dumps(rows[key]), flush=True)
                continue
            start = time.time()
            vecs, rats = embed(path, sentences, use_rationale, settings.system_prompt, settings.max_new_tokens,
                               args.cache_dir)
            cos[key] = np.sum(vecs[left] * vecs[right], axis=1)
            rows[key] = {
                "spearman": 100 * spearmanr(cos[key], gold).statistic,
                "rationale_length": float(np.mean([len(r.token_ids) for r in rats])) if use_rationale else 0.0,
                "truncation_rate": float(np.mean([r.truncated for r in rats])) if use_rationale else 0.0,
                "seconds": round(time.time() - start, 1),
            }
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps({"cosines": cos[key].tolist(), "row": rows[key]}))
            print(key, json.dumps(rows[key]), flush=True)
    if args.base_only or args.grace_only:
        return 0

    def diff(a, b):
        def stat(ca, cb, g):
            return 100 * (spearmanr(ca, g).statistic - spearmanr(cb, g).statistic)

        res = bootstrap((cos[a], cos[b], gold), stat, paired=True, n_resamples=args.resamples,
                        confidence_level=0.95, method="percentile", random_state=0, vectorized=False)
        point = stat(cos[a], cos[b], gold)
        return {"a": a, "b": b, "difference": point, "ci95": [res.confidence_interval.low,
                                                              res.confidence_interval.high]}

    wanted = [("grace, rationale", "base, rationale"), ("grace, rationale", "base, no rationale"),
              ("grace, no rationale", "base, no rationale"), ("grace, no rationale", "base, rationale")]
    comparisons = [diff(a, b) for a, b in wanted if a in cos and b in cos][:3]
    for c in comparisons:
        print(f"{c['a']} - {c['b']}: {c['difference']:+.2f} [95% {c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]")
    out = {"pairs": len(pairs), "sentences": len(sentences), "system_prompt": settings.system_prompt,
           "max_new_tokens": settings.max_new_tokens, "rows": rows, "paired_bootstrap": comparisons,
           "grace": args.grace, "base": args.base}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
