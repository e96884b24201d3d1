"""``grace-trl push``: publish a trained GRACE checkpoint to the Hugging Face Hub (see :mod:`grace_trl.hub`).

``--dry-run DIR`` only writes the folder that would be uploaded, for inspection or offline tests.
The token comes from ``--token``, ``HF_TOKEN`` or ``hf auth login`` and is never printed.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..cli_args import ArgumentParser, UsageError
from ..hub import prepare_hub_folder, push_to_hub


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="grace-trl push", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", "--model", dest="checkpoint", required=True,
                   help="Trained output_dir, checkpoint-N folder or LoRA adapter folder (merged before upload).")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub.")
    p.add_argument("--private", action="store_true", help="Create the repo as private.")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login).")
    p.add_argument("--commit-message", default="Upload GRACE model")
    p.add_argument("--results", default=None, help="JSON {task: {metric: value}} shown in the model card.")
    p.add_argument("--base-model", default=None, help="Base model id for the card / LoRA merge.")
    p.add_argument("--revision", default=None, help="Branch to push to.")
    p.add_argument("--dry-run", metavar="DIR", default=None, help="Write the folder to DIR and upload nothing.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return _run(args)
    except ValueError as err:  # the library refuses the input (pooling, results, base model): one line
        raise UsageError(str(err)) from err


def _run(args) -> int:
    if args.dry_run:
        folder = prepare_hub_folder(args.checkpoint, args.dry_run, args.repo_id, args.results, args.base_model)
        print(f"prepared {folder} (not uploaded)")
        return 0
    url = push_to_hub(args.checkpoint, args.repo_id, private=args.private, token=args.token,
                      commit_message=args.commit_message, results=args.results, base_model=args.base_model,
                      revision=args.revision)
    print(f"pushed {args.checkpoint} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
