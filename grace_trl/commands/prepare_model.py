"""``grace-trl prepare-model <alias>``: dequantize an embedded model into the local cache once."""

from __future__ import annotations

from ..aliases import MODEL_ALIASES, prepare_alias
from ..cli_args import ArgumentParser


def main(argv=None) -> int:
    parser = ArgumentParser(prog="grace-trl prepare-model", description=__doc__)
    parser.add_argument("alias", choices=sorted(MODEL_ALIASES))
    parser.add_argument("--force", action="store_true", help="rebuild even if the checkpoint exists")
    args = parser.parse_args(argv)
    print(prepare_alias(args.alias, force=args.force))
    return 0
