"""``grace-trl train-cl``: the paper's "w/ CL" baseline (InfoNCE on the same data) from a recipe plus overrides.

    grace-trl train-cl --config recipes/smollm2-135m/cl_cpu.yaml [--key value ...]

The training itself is :func:`grace_trl.baselines.train_cl`.
"""

from __future__ import annotations

import logging
import sys

from ..baselines import CLConfig, train_cl


def parse_args(argv: list[str] | None = None) -> CLConfig:
    """CLConfig from ``--config recipe.yaml`` plus flag overrides (TrlParser, as ``grace-trl train``)."""
    from trl import TrlParser

    from ..cli_args import UsageError, check_recipe, config_path

    parser = TrlParser((CLConfig,), prog="grace-trl train-cl", allow_abbrev=False,
                       description="Train the contrastive (CL) baseline.")
    argv = list(sys.argv[1:] if argv is None else argv)
    if config_path(argv):
        check_recipe(config_path(argv), parser)
    try:
        (config,) = parser.parse_args_and_config(args=argv)
    except ValueError as err:
        raise UsageError(" ".join(str(err).split())) from err
    return config


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    train_cl(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
