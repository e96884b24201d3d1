"""``grace-trl`` command line: one sub-command per job, each in its own module."""

from __future__ import annotations

import errno
import importlib
import sys

# OMP_WAIT_POLICY is set in grace_trl/__init__.py, before torch is imported.

COMMANDS = {
    "train": ("grace_trl.commands.train", "Train with GRACE (TrlParser: --config recipe.yaml plus overrides)."),
    "eval": ("grace_trl.commands.eval", "Evaluate models on STS / retrieval / classification tasks (mteb)."),
    "train-cl": ("grace_trl.commands.train_cl", "Train the contrastive (InfoNCE) baseline (sentence-transformers)."),
    "explain": ("grace_trl.commands.explain", "Print the rationale and embedding neighbours of texts."),
    "prepare-model": ("grace_trl.commands.prepare_model", "Prepare an embedded model alias into the local cache."),
    "prepare-data": ("grace_trl.commands.prepare_data", "Convert and validate a training dataset."),
    "plan-memory": ("grace_trl.commands.plan_memory", "Estimate per-GPU memory for a recipe."),
    "export": ("grace_trl.commands.export", "Export a (LoRA) checkpoint as merged weights or adapter."),
    "push": ("grace_trl.commands.push", "Push a trained model to the Hugging Face Hub."),
}


# Errors of the file system rather than of grace-trl: reported in one line.
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def _usage() -> str:
    lines = ["usage: grace-trl <command> [options]   (grace-trl --version, grace-trl <command> --help)", "",
             "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"grace-trl {version('grace-trl')} (trl {version('trl')}, transformers {version('transformers')})")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"grace-trl: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from .checks import RunStateError
    from .cli_args import UsageError
    from .data import DataValidationError

    module = importlib.import_module(COMMANDS[name][0])
    try:
        result = module.main(rest)
    except (UsageError, FileNotFoundError, DataValidationError, RunStateError) as err:
        # the user's input is wrong, not the program: one line, as argparse reports a bad flag
        message = str(err) if not isinstance(err, FileNotFoundError) or not err.filename else \
            f"{err.strerror}: {err.filename}"
        print(f"grace-trl {name}: error: {message}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            raise
        # the machine, not the program: a full disk or a read-only folder ends in one line, naming the file
        where = f": {err.filename}" if err.filename else ""
        print(f"grace-trl {name}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
