"""Argument parsing shared by the ``grace-trl`` commands: one behaviour for every command, as TRL's CLI.

Flags accept ``--max-steps`` and ``--max_steps`` alike, a flag is never matched by a prefix (``--max_step``
is an error, not ``--max_steps``), and bad input ends in a one-line :class:`UsageError` instead of a traceback.
"""

from __future__ import annotations

import argparse
import os


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
    """The ``--config`` file named on a command line, if any; naming two is an error (which would win is a guess)."""
    found = []
    for i, token in enumerate(argv):
        if token == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config needs a YAML file")
            found.append(argv[i + 1])
        elif token.startswith("--config="):
            found.append(token.split("=", 1)[1])
    if len(found) > 1:
        raise UsageError(f"--config given {len(found)} times ({', '.join(found)}); pass one recipe and override its "
                         "keys with flags")
    return found[0] if found else None


def load_yaml_mapping(path: str) -> dict:
    """A YAML file as a dict; a missing or unreadable file, bad YAML or a key given twice fails naming file and line.

    PyYAML keeps the last value of a repeated key silently; a recipe that sets ``learning_rate`` twice is a
    mistake, not a choice, so it is refused.
    """
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise UsageError(f"{path}, line {key_node.start_mark.line + 1}: key {key!r} is given twice (first on "
                                 f"line {seen[key] + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    if os.path.isdir(path):
        raise UsageError(f"--config {path} is a folder; pass a YAML recipe file")
    if not os.path.isfile(path):
        raise UsageError(f"--config {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=StrictLoader)
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text (byte {err.start}: {err.object[err.start:err.start + 1]!r}); "
                         "save the recipe as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise UsageError(f"{path}{where}: not valid YAML ({' '.join(str(problem).split())})") from None
    return data or {}


def check_recipe(path: str, parser: argparse.ArgumentParser) -> None:
    """Reject a recipe key that no option of ``parser`` takes, naming the closest valid key, before anything loads."""
    import difflib

    recipe = load_yaml_mapping(path)
    if not isinstance(recipe, dict):
        raise UsageError(f"{path}: a recipe must be a YAML mapping of option names to values")
    valid = {a.dest for a in parser._actions} | {"env"}
    for key in recipe:
        if key not in valid:
            close = difflib.get_close_matches(str(key), sorted(valid), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; {parser.prog} --help lists every key"
            raise UsageError(f"{path}: unknown key {key!r}{hint}")
