"""Does a trained checkpoint still write? The generation check of several models against the first one.

Runs :func:`grace_trl.evaluation.generation_check.generation_check` (perplexity on held-out prose and 60
fixed questions with known one-word answers, greedy) for every ``--model``, with the first model as the
reference, and prints and writes the score, the **regressions** (questions the reference answers right
and the model gets wrong), the gains and the perplexity change, plus the project's verdict
(``generation_kept``: at most 5% of the reference's right answers lost, perplexity within 2%).

    python benchmarks/generation_report.py --model base=smollm2-135m --model grace=outputs/smollm2-135m-grace-sup

The reference's result comes from :func:`grace_trl.evaluation.generation_check.reference_generation_check`,
cached by the weights' fingerprint (the cache the trainer's ``generation_check`` reads too), so a search scores
the base model once; it is also written to ``benchmarks/results/generation_base.json`` (``--reference-report``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_REPORT = ROOT / "benchmarks" / "results" / "generation_base.json"


def load_model(path: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grace_trl.aliases import resolve_model_name

    folder = resolve_model_name(path)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)


def check_model(path: str, reference: dict | None = None) -> dict:
    from grace_trl.evaluation.generation_check import generation_check

    model, tok = load_model(path)
    start = time.time()
    result = generation_check(model, tok, reference=reference)
    result["seconds"] = round(time.time() - start, 1)
    result["model"] = path
    return result


def reference_result(path: str, report: Path | None = REFERENCE_REPORT, refresh: bool = False) -> dict:
    """The reference model's check, read from the fingerprint-keyed cache when it holds it; written to ``report``."""
    from grace_trl.evaluation.generation_check import reference_generation_check

    model, tok = load_model(path)
    result = {**reference_generation_check(model, tok, refresh=refresh), "model": path}
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return result


def markdown(results: dict[str, dict]) -> str:
    from grace_trl.evaluation.generation_check import generation_kept

    lines = ["| model | answers right | regressions (of the reference's right answers) | gained | perplexity "
             "| perplexity change | generation kept |", "|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        if "regressions" in r:
            lines.append(f"| {label} | {r['n_correct']}/{r['n_questions']} | {len(r['regressions'])}/"
                         f"{r['reference_correct']} ({100 * r['regression_rate']:.1f}%) | {len(r['gains'])} | "
                         f"{r['perplexity']:.2f} | {100 * r['perplexity_change']:+.1f}% | "
                         f"{'yes' if generation_kept(r) else 'no'} |")
        else:
            lines.append(f"| {label} (reference) | {r['n_correct']}/{r['n_questions']} | – | – | "
                         f"{r['perplexity']:.2f} | – | – |")
    for label, r in results.items():
        if r.get("regressions"):
            lines += ["", f"Regressions of **{label}**:"]
            answers = {a["question"]: a["answer"] for a in r["answers"]}
            for q in r["regressions"]:
                lines.append(f"- *{q}* → {answers[q][:160]!r}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from grace_trl.evaluation.generation_check import summary_line

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True,
                   help="label=path (or alias); the first one is the reference")
    p.add_argument("--reference-report", default=str(REFERENCE_REPORT),
                   help="where the reference's result is written ('' for nowhere)")
    p.add_argument("--recompute-reference", action="store_true",
                   help="check the reference again instead of reading its cached result")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "generation_check.json"))
    args = p.parse_args(argv)
    models = []
    for spec in args.model:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            p.error(f"--model {spec!r}: expected label=path")
        models.append((label, path))
    (ref_label, ref_path), others = models[0], models[1:]
    results = {ref_label: reference_result(ref_path, Path(args.reference_report) if args.reference_report else None,
                                           refresh=args.recompute_reference)}
    print(summary_line(ref_label, results[ref_label]), flush=True)
    for label, path in others:
        results[label] = check_model(path, reference=results[ref_label])
        print(summary_line(label, results[label]), flush=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
