"""Package layout: the library never imports its command-line entry points."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "grace_trl"


def _imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def test_no_library_module_imports_from_commands():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "commands" in path.relative_to(PACKAGE).parts:
            continue
        for name in _imported_modules(path):
            if "commands" in name.lstrip(".").split("."):
                offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not offenders, offenders


# Everything an encoder user (embedding, evaluation, export, Hub) needs; none of it may load TRL.
ENCODER_PATH = (
    "grace_trl", "grace_trl.settings", "grace_trl.encoder", "grace_trl.hub", "grace_trl.st_module",
    "grace_trl.model_card", "grace_trl.export", "grace_trl.pooling", "grace_trl.prompts", "grace_trl.generation",
    "grace_trl.cache", "grace_trl.evaluation", "grace_trl.evaluation.evaluators", "grace_trl.evaluation.mteb_wrapper",
    "grace_trl.evaluation.tasks", "grace_trl.evaluation.report", "grace_trl.evaluation.stats",
    "grace_trl.evaluation.generation_check",
)


def _loads_trl(code: str) -> bool:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('trl' in sys.modules)"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1] == "True"


def test_encoder_path_imports_no_trl():
    imports = "; ".join(f"import {m}" for m in ENCODER_PATH)
    code = f"{imports}\nimport grace_trl\ngrace_trl.GRACEEncoder, grace_trl.GRACESettings"
    assert not _loads_trl(code), "the encoder path imported trl"


def test_training_names_still_load_from_the_package():
    code = ("from grace_trl import GRACEConfig, GRACETrainer\n"
            "from grace_trl.config import SETTINGS_FILE, GRACESettings as Compat\n"
            "import grace_trl.settings as s; assert Compat is s.GRACESettings and SETTINGS_FILE == s.SETTINGS_FILE")
    assert _loads_trl(code)


def test_entry_points_live_in_commands_only():
    from grace_trl.cli import COMMANDS

    assert all(module.startswith("grace_trl.commands.") for module, _ in COMMANDS.values()), COMMANDS
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "commands" or rel.as_posix() == "cli.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in ("main", "build_parser"):
                offenders.append(f"{rel} defines {node.name}()")
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                offenders.append(f"{rel} runs as a script")
    assert not offenders, offenders


def test_module_names_say_what_they_hold():
    import importlib.util

    assert importlib.util.find_spec("grace_trl.aliases") and importlib.util.find_spec("grace_trl.callbacks")
    # the old names misled: models.py held aliases, reporting.py training-curve callbacks
    assert importlib.util.find_spec("grace_trl.models") is None
    assert importlib.util.find_spec("grace_trl.reporting") is None


def test_every_upper_version_bound_gives_its_reason():
    """An unexplained cap blocks users' upgrades for nothing: each one names the grace_trl code that needs it."""
    lines = (Path(__file__).resolve().parents[1] / "setup.cfg").read_text(encoding="utf-8").splitlines()
    start = lines.index("install_requires =")
    capped = []
    for i in range(start + 1, len(lines)):
        line = lines[i].strip()
        if not lines[i].startswith((" ", "\t")) or not line:
            break
        if "<" in line and not line.startswith("#"):
            capped.append(line)
            assert lines[i - 1].strip().startswith("# "), f"setup.cfg: {line} has no reason above it"
    assert len(capped) >= 10
