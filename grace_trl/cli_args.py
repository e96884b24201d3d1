"""Argument parsing shared by the ``grace-trl`` commands: one behaviour for every command, as TRL's CLI.

Flags accept ``--max-steps`` and ``--max_steps`` alike, a flag is never matched by a prefix (``--max_step``
is an error, not ``--max_steps``), and bad input ends in a one-line :class:`UsageError` instead of a traceback.
"""

from __future__ import annotations

import argparse


class UsageError(ValueError):
    """Bad command-line or configuration input; ``grace-trl`` prints it as one line and exits with status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` without prefix matching that reads ``--foo_bar`` and ``--foo-bar`` alike."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        import sys

        args = list(sys.argv[1:] if args is None else args)
        known = self._option_string_actions
        for i, token in enumerate(args):
            if token == "--":
                break
            if not token.startswith("--"):
                continue
            name, sep, value = token.partition("=")
            if name in known:
                continue
            for variant in ("--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")):
                if variant in known:
                    args[i] = variant + sep + value
                    break
        return super().parse_known_args(args, namespace)


def config_path(argv: list[str]) -> str | None:
    """The ``--config`` file named on a command line, if any."""
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--config="):
            return token.split("=", 1)[1]
    return None


def check_recipe(path: str, parser: argparse.ArgumentParser) -> None:
    """Reject a recipe key that no option of ``parser`` takes, naming the closest valid key, before anything loads."""
    import difflib

    import yaml

    with open(path, encoding="utf-8") as f:
        recipe = yaml.safe_load(f) or {}
    if not isinstance(recipe, dict):
        raise UsageError(f"{path}: a recipe must be a YAML mapping of option names to values")
    valid = {a.dest for a in parser._actions} | {"env"}
    for key in recipe:
        if key not in valid:
            close = difflib.get_close_matches(str(key), sorted(valid), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; {parser.prog} --help lists every key"
            raise UsageError(f"{path}: unknown key {key!r}{hint}")
