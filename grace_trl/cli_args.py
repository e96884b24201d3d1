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
