"""``grace-trl eval``: several models/settings side by side on offline MTEB tasks.

Example (the paper's comparison on a CPU-sized reduced run)::

    grace-trl eval --model base=smollm2-135m --model grace=out/ckpt --model cl=out/cl \
        --with-and-without-rationale --tasks STSBenchmark,SciFact,Banking77 --limit 200 \
        --max-new-tokens 64 --output-dir eval_out

Writes mteb result files (``OUT/mteb/results/<model>/<revision>/experiments/<settings>/<Task>.json``),
``results.json``, ``results.md`` and (unless ``--no-html``) ``report.html`` with ``scores.png``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from ..cli_args import ArgumentParser
from ..evaluation.runner import canonical_tasks, check_task_data, plan_runs, resolve_system_prompt, run_evaluation
from ..generation import BACKENDS


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="grace-trl eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="[LABEL=]PATH",
                   help="Model alias, local checkpoint, Hub id, or sentence-transformers folder. Repeatable.")
    p.add_argument("--tasks", default="STSBenchmark,SciFact,Banking77Classification",
                   help="Comma-separated: the bundled offline tasks (STSBenchmark, SciFact, Banking77Classification; "
                        "short names stsb, scifact, banking77) or any mteb task name, whose data comes from the Hub. "
                        "(default: %(default)s)")
    p.add_argument("--limit", type=int, default=None,
                   help="Reduced run (N >= 3): N STS pairs / N SciFact queries (+relevant docs + distractors) / "
                        "N Banking77 "
                        "test texts (seeded). Results are labelled as reduced.")
    p.add_argument("--seed", type=int, default=42,
                   help="Seed of the --limit samples and of the bootstrap intervals. (default: %(default)s)")
    p.add_argument("--no-rationale", action="store_true", help="Embed the prompt only (no generation).")
    p.add_argument("--with-and-without-rationale", action="store_true",
                   help="Evaluate every causal LM twice: without and with its rationale.")
    p.add_argument("--max-new-tokens", type=int, default=None, help="Rationale length (default: checkpoint setting).")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--system-prompt", default=None,
                        help="System prompt for every causal LM instead of each checkpoint's own "
                             "('none' or '' for none). "
                             "Compare a base model and a GRACE checkpoint under one prompt.")
    prompt.add_argument("--system-prompt-from", default=None, metavar="CHECKPOINT",
                        help="Use the system prompt saved in this checkpoint's grace_config.json for every causal LM.")
    p.add_argument("--batch-size", type=int, default=16,
                   help="Texts embedded (and rationales generated) together. (default: %(default)s)")
    p.add_argument("--scifact-distractors", type=int, default=None,
                   help="Distractor docs in a reduced SciFact (2×limit).")
    p.add_argument("--n-experiments", type=int, default=None,
                   help="Banking77 classifier repeats (mteb: 10; 1 with --limit).")
    p.add_argument("--samples-per-label", type=int, default=None,
                   help="Banking77 training texts per label per experiment (mteb: 8); "
                        "changing it marks the run reduced.")
    p.add_argument("--data-dir", default=None,
                   help="Folder holding STSBenchmark/, SciFact/, Banking77Classification/.")
    p.add_argument("--cache-dir", default=None, help="Rationale cache (default OUTPUT_DIR/rationale_cache).")
    p.add_argument("--embedding-cache-dir", default=None,
                   help="mteb's embedding cache for the causal LMs (default OUTPUT_DIR/embedding_cache): a repeated "
                        "evaluation with the same weights and settings reads the vectors instead of encoding.")
    p.add_argument("--no-embedding-cache", action="store_true", help="Encode every text again.")
    p.add_argument("--device", default=None,
                   help="torch device for the models, e.g. cpu or cuda:0. (default: cuda when available, else cpu)")
    p.add_argument("--backend", default=BACKENDS[0], choices=BACKENDS,
                   help="Rationale generation: hf (transformers) or vllm (GPU). (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is much faster on a CPU shared with other jobs).")
    p.add_argument("--generation-check", action="store_true",
                   help="Also report perplexity on held-out text and greedy answers for each causal LM.")
    p.add_argument("--samples", type=int, default=5,
                   help="STS sample pairs with rationales in the HTML report. (default: %(default)s)")
    p.add_argument("--no-html", action="store_true", help="Skip report.html and scores.png.")
    p.add_argument("--output-dir", required=True,
                   help="Where results.json/.md, report.html, mteb's result files and the caches go.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.addFilter(_quiet_mteb)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", handlers=[handler])
    with warnings.catch_warnings():
        # mteb's cache bookkeeping ("Dimension file not found", "Initialized empty VectorCacheMap") and the
        # STSBenchmark.v2 notice (the paper reports STSBenchmark) say nothing about the results
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mteb(\.|$)")
        return _main(args)


def _quiet_mteb(record: logging.LogRecord) -> bool:
    """The terminal shows mteb's errors only; grace-trl's own lines say what is being evaluated."""
    return not record.name.startswith("mteb") or record.levelno >= logging.ERROR


def _main(args) -> int:
    from ..evaluation.report import text_table, write_reports

    try:
        task_names = canonical_tasks(args.tasks)
        plan_runs(args.model, args.no_rationale, args.with_and_without_rationale)
        resolve_system_prompt(args)
        check_task_data(task_names, args)
    except (ValueError, FileNotFoundError) as err:
        print(f"grace-trl eval: error: {err}", file=sys.stderr)
        return 2
    results = run_evaluation(args)
    paths = write_reports(results, args.output_dir, html_output=not args.no_html)
    print()
    print(text_table(results))
    print()
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
