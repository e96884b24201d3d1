"""``grace-trl export``: a training checkpoint → a clean model folder (LoRA merged, or adapter only).

``--merge`` folds a LoRA adapter into the base weights so transformers, vLLM and
sentence-transformers load a plain checkpoint; ``--adapter`` keeps only the adapter (optionally
re-pointed at a Hub base with ``--base-model``). ``grace_config.json`` travels with both. The work is
done by :func:`grace_trl.export.export_checkpoint`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..cli_args import ArgumentParser
from ..export import export_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="grace-trl export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="Trained output_dir or checkpoint-N folder.")
    p.add_argument("--output", required=True, help="Folder to write.")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--merge", action="store_true", help="Merge a LoRA adapter into the base weights (default).")
    group.add_argument("--adapter", action="store_true", help="Export the LoRA adapter only.")
    p.add_argument("--base-model", default=None,
                   help="Base model of the adapter (default: adapter_config.json); "
                        "with --adapter it is written there.")
    p.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"),
                   help="dtype of the merged weights (default: the base checkpoint's).")
    p.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    summary = export_checkpoint(args.checkpoint, args.output, "adapter" if args.adapter else "merge",
                                base_model=args.base_model, dtype=args.dtype, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
