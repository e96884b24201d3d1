"""SciFact and Banking77 for a GRACE checkpoint against its base model, with paired bootstrap intervals.

The STS gain of a recipe could come at the cost of other embedding tasks; this script checks the two
other bundled task types once per chosen recipe, under the checkpoint's own system prompt and
rationale length, with and without rationale:

* SciFact (test qrels): ``--scifact-queries`` seeded queries, all their relevant abstracts and
  ``2x`` as many random other abstracts (a reduced corpus: figures are not leaderboard-comparable);
  per-query nDCG@10 through pytrec_eval.
* Banking77: mteb's protocol of ``--samples-per-label`` seeded train examples per label and a
  logistic regression (``max_iter=100``), on ``--banking-test`` seeded test examples; per-example
  correctness. One train draw (mteb averages ten), so the interval covers test sampling only.

Intervals: ``scipy.stats.bootstrap(paired=True)`` over queries / test examples of GRACE - base.

    python benchmarks/transfer_report.py --grace outputs/smollm2-135m-grace-sup --base smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from scipy.stats import bootstrap

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from sts_test_report import cached_row_path, report_settings  # noqa: E402


def encode(path: str, texts: list[str], use_rationale: bool, settings, cache_dir: str, batch_size: int):
    from grace_trl.encoder import GRACEEncoder

    enc = GRACEEncoder.from_pretrained(path, device="cpu", cache_dir=cache_dir)
    vecs, rats = enc.encode(texts, batch_size=batch_size, max_new_tokens=settings.max_new_tokens,
                            use_rationale=use_rationale, return_rationales=True,
                            system_prompt=settings.system_prompt)
    stats = {"rationale_length": float(np.mean([len(r.token_ids) for r in rats])) if use_rationale else 0.0,
             "truncation_rate": float(np.mean([r.truncated for r in rats])) if use_rationale else 0.0}
    return np.asarray(vecs), stats


def scifact_scores(vecs: np.ndarray, index: dict[str, int], data) -> dict[str, float]:
    """Per-query nDCG@10 (x100) over the reduced corpus."""
    import pytrec_eval

    doc_ids = sorted(data.corpus)
    docs = vecs[[index[("d", d)] for d in doc_ids]]
    run = {}
    for qid in sorted(data.queries):
        sims = docs @ vecs[index[("q", qid)]]
        top = np.argsort(-sims)[:100]
        run[qid] = {doc_ids[i]: float(sims[i]) for i in top}
    per_query = pytrec_eval.RelevanceEvaluator(data.qrels, {"ndcg_cut.10"}).evaluate(run)
    return {q: 100 * per_query[q]["ndcg_cut_10"] for q in sorted(data.queries)}


def banking_correct(vecs: np.ndarray, n_train: int, y_train, y_test) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=100, random_state=42)
    clf.fit(vecs[:n_train], y_train)
    return (clf.predict(vecs[n_train:]) == np.asarray(y_test)).astype(float)


def paired(a: np.ndarray, b: np.ndarray, scale: float, resamples: int) -> dict:
    """Mean of a - b (x ``scale``) with its paired-bootstrap 95% interval."""
    def stat(x, y):
        return scale * float(np.mean(x - y))

    res = bootstrap((a, b), stat, paired=True, n_resamples=resamples, confidence_level=0.95,
                    method="percentile", random_state=0, vectorized=False)
    return {"difference": stat(a, b), "ci95": [float(res.confidence_interval.low),
                                               float(res.confidence_interval.high)]}


def main(argv=None) -> int:
    from grace_trl.evaluation.tasks import load_banking77, load_scifact, reduce_retrieval

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grace", required=True)
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--settings", default=None,
                   help="recipe YAML or GRACE checkpoint whose prompt and rationale length every row uses "
                        "(default: --grace's own); lets a non-GRACE model such as the CL baseline be scored")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--scifact-queries", type=int, default=100)
    p.add_argument("--banking-test", type=int, default=400)
    p.add_argument("--samples-per-label", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--cache-dir", default=str(ROOT / "outputs" / "rationale_cache"))
    p.add_argument("--resamples", type=int, default=5000)
    p.add_argument("--rows-cache", default=str(ROOT / "outputs" / "transfer_rows"),
                   help="per-row scores by model, prompt, length and texts, so a base row is embedded once")
    p.add_argument("--no-rationale-only", action="store_true",
                   help="score --grace without rationale only (a model trained as a plain encoder, e.g. CL)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "transfer.json"))
    args = p.parse_args(argv)

    settings = report_settings(args.settings or args.grace)
    sci = reduce_retrieval(load_scifact(args.data_dir, split="test"), args.scifact_queries, seed=args.seed)
    bank = load_banking77(args.data_dir)
    rng = np.random.RandomState(args.seed)
    by_label: dict[int, list[int]] = {}
    for i, (_, y) in enumerate(bank["train"]):
        by_label.setdefault(y, []).append(i)
    train_idx = sorted(i for y in sorted(by_label)
                       for i in rng.choice(by_label[y], size=args.samples_per_label, replace=False))
    test_idx = sorted(rng.choice(len(bank["test"]), size=min(args.banking_test, len(bank["test"])),
                                 replace=False).tolist())
    train = [bank["train"][i] for i in train_idx]
    test = [bank["test"][i] for i in test_idx]

    # one text list per model pass: queries, documents, Banking77 train, Banking77 test
    keys = [("q", q) for q in sorted(sci.queries)] + [("d", d) for d in sorted(sci.corpus)]
    texts = [sci.queries[k[1]] if k[0] == "q" else
             (sci.corpus[k[1]]["title"] + ". " + sci.corpus[k[1]]["text"]).strip(". ") for k in keys]
    index = {k: i for i, k in enumerate(keys)}
    n_sci = len(texts)
    texts += [t for t, _ in train] + [t for t, _ in test]
    print(f"SciFact {sci.info}; Banking77 train {len(train)}, test {len(test)}; {len(texts)} texts per pass",
          flush=True)

    rows, per_item = {}, {}
    for label, path in (("base", args.base), ("grace", args.grace)):
        for use_rationale in ((False,) if label == "grace" and args.no_rationale_only else (False, True)):
            key = f"{label}, {'rationale' if use_rationale else 'no rationale'}"
            cached = cached_row_path(args.rows_cache, path, settings.system_prompt, settings.max_new_tokens,
                                     use_rationale, texts, [y for _, y in train], [y for _, y in test])
            if cached.exists():
                entry = json.loads(cached.read_text())
                per_item[key] = (np.array(entry["scifact"]), np.array(entry["banking77"]))
                rows[key] = entry["row"]
                print(key, "(cached)", json.dumps(rows[key]), flush=True)
                continue
            start = time.time()
            vecs, stats = encode(path, texts, use_rationale, settings, args.cache_dir, args.batch_size)
            sci_q = scifact_scores(vecs[:n_sci], index, sci)
            correct = banking_correct(vecs[n_sci:], len(train), [y for _, y in train], [y for _, y in test])
            per_item[key] = (np.array([sci_q[q] for q in sorted(sci_q)]), correct)
            rows[key] = {"scifact_ndcg@10": float(np.mean(per_item[key][0])),
                         "banking77_accuracy": 100 * float(np.mean(correct)), **stats,
                         "seconds": round(time.time() - start, 1)}
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps({"scifact": per_item[key][0].tolist(),
                                          "banking77": per_item[key][1].tolist(), "row": rows[key]}))
            print(key, json.dumps(rows[key]), flush=True)

    comparisons = []
    for a, b in (("grace, rationale", "base, rationale"), ("grace, rationale", "base, no rationale"),
                 ("grace, no rationale", "base, no rationale"), ("grace, no rationale", "base, rationale")):
        if a not in per_item:  # --no-rationale-only
            continue
        for t, name in enumerate(("scifact_ndcg@10", "banking77_accuracy")):
            scale = 1.0 if t == 0 else 100.0  # nDCG is already x100; correctness is 0/1
            c = {"task": name, "a": a, "b": b, **paired(per_item[a][t], per_item[b][t], scale, args.resamples)}
            comparisons.append(c)
            print(f"{name}: {a} - {b}: {c['difference']:+.2f} [95% {c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]")
    out = {"scifact": {**sci.info, "split": "test", "metric": "nDCG@10 x100, reduced corpus"},
           "banking77": {"train": len(train), "test": len(test), "samples_per_label": args.samples_per_label,
                         "classifier": "LogisticRegression(max_iter=100)", "metric": "accuracy x100"},
           "system_prompt": settings.system_prompt, "max_new_tokens": settings.max_new_tokens,
           "rows": rows, "paired_bootstrap": comparisons, "grace": args.grace, "base": args.base}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
