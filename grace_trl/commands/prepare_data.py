"""``grace-trl prepare-data``: turn a public dataset into GRACE's canonical JSONL, validated and length-filtered.

Loading, column mapping and validation are :func:`grace_trl.data.load_grace_dataset` — the same
code the trainer runs — so a file this command writes is one the trainer accepts. With
``--tokenizer`` and ``--max-prompt-tokens``, rows are dropped when any of their texts, templated as
the policy will read it (system prompt + instruction + chat template), is longer than the limit:
TRL does not truncate prompts, so one over-long text would otherwise eat the vLLM context
(``vllm_max_model_length``) and the activation budget of a whole micro-batch.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..cli_args import ArgumentParser
from ..data import DEFAULT_MODE, MODES, load_grace_dataset
from ..files import atomic_write
from ..prompts import DEFAULT_SYSTEM_PROMPT, PromptEncoder, normalize_system_prompt


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="grace-trl prepare-data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True,
                   help="Local .jsonl/.json/.csv/.tsv/.parquet/.txt file, a committed sample name "
                        "or a Hub dataset id.")
    p.add_argument("--output", required=True, help="Output .jsonl (query/positive/negatives or text per line).")
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    p.add_argument("--column-mapping", default=None,
                   help="e.g. 'query=sent0,positive=sent1,negatives=hard_neg' or 'text=sentence'; "
                        "'+' joins several negative columns.")
    p.add_argument("--dataset-config", default=None, help="Hub dataset configuration name.")
    p.add_argument("--split", default="train", help="Hub dataset split.")
    p.add_argument("--num-negatives", type=int, default=None,
                   help="Require exactly this many negatives per supervised row (default: as many as the first row).")
    p.add_argument("--limit", type=int, default=None, help="Read only the first N rows.")
    p.add_argument("--tokenizer", default=None, help="Tokenizer (model id, path or alias) for --max-prompt-tokens.")
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="Drop rows with a templated text longer than this many tokens (needs --tokenizer).")
    p.add_argument("--system-prompt", default=DEFAULT_SYSTEM_PROMPT,
                   help="System prompt used for the length check ('none' for none); must match the recipe.")
    p.add_argument("--instruction", default=None, help="Instruction used for the length check; must match the recipe.")
    p.add_argument("--chat-template-kwargs", type=json.loads, default=None,
                   help="JSON chat-template variables for the length check (e.g. '{\"enable_thinking\": false}'); "
                        "must match the recipe.")
    return p


def _texts(row: dict, mode: str) -> list[str]:
    if mode == "unsupervised":
        return [row["text"]]
    return [row["query"], row["positive"], *row["negatives"]]


def length_filter(rows: list[dict], mode: str, tokenizer, max_prompt_tokens: int, system_prompt: str | None,
                  instruction: str | None,
                  chat_template_kwargs: dict | None = None) -> tuple[list[dict], list[int], int]:
    """Rows whose every templated text fits; also the indices dropped and the longest prompt seen."""
    from tqdm.auto import tqdm

    encoder = PromptEncoder(tokenizer, system_prompt, instruction, chat_template_kwargs)
    kept, dropped, longest = [], [], 0
    for i, row in enumerate(tqdm(rows, desc="checking prompt lengths", unit="row")):
        length = max(len(encoder(t).input_ids) for t in _texts(row, mode))
        longest = max(longest, length)
        if length > max_prompt_tokens:
            dropped.append(i)
        else:
            kept.append(row)
    return kept, dropped, longest


def write_jsonl(rows: list[dict], path: str) -> None:
    """Written to a temporary file then renamed, so a crash never leaves a truncated dataset behind."""
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def prepare(args: argparse.Namespace) -> dict:
    if (args.max_prompt_tokens is None) != (args.tokenizer is None):
        raise ValueError("--max-prompt-tokens and --tokenizer go together: the limit is counted in the "
                         "policy's tokens")
    if not args.output.endswith(".jsonl"):
        raise ValueError(f"--output must be a .jsonl file, got {args.output!r}")
    system_prompt = normalize_system_prompt(args.system_prompt)
    dataset = load_grace_dataset(
        args.input, mode=args.mode, column_mapping=args.column_mapping, split=args.split,
        dataset_config=args.dataset_config,
        num_negatives=args.num_negatives if args.mode == "supervised" else None, limit=args.limit)
    rows = dataset.to_list()
    summary = {"input": args.input, "rows_read": len(rows), "dropped_too_long": 0, "longest_prompt_tokens": None}
    if args.max_prompt_tokens is not None:
        from transformers import AutoTokenizer

        from ..aliases import resolve_model_name

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(args.tokenizer))
        rows, dropped, longest = length_filter(rows, args.mode, tokenizer, args.max_prompt_tokens, system_prompt,
                                               args.instruction, args.chat_template_kwargs)
        summary.update(dropped_too_long=len(dropped), longest_prompt_tokens=longest,
                       first_dropped_rows=dropped[:10])
        if not rows:
            raise ValueError(f"every row has a prompt longer than --max-prompt-tokens {args.max_prompt_tokens} "
                             f"(longest {longest}); raise the limit")
    write_jsonl(rows, args.output)
    summary.update(rows_written=len(rows), output=args.output, mode=args.mode)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = prepare(args)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
