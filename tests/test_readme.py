"""The README's script example runs as printed (on the embedded SmolLM2, with its own step limit)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(heading: str, language: str) -> list[str]:
    """The ``language`` code blocks between ``heading`` and the next heading of any level (outside code)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(heading)
    blocks, block, fence = [], None, False
    for line in lines[start + 1:]:
        if line.startswith("```"):
            if fence:
                if block is not None:
                    blocks.append("\n".join(block) + "\n")
                fence, block = False, None
            else:
                fence, block = True, ([] if line == f"```{language}" else None)
            continue
        if not fence and re.match(r"#{1,6} ", line):
            break
        if fence and block is not None:
            block.append(line)
    return blocks


def test_script_example_runs_as_printed(tmp_path, smollm2_path):
    blocks = section_code("## Use it from your own script", "python")
    assert len(blocks) == 2 and "max_steps=" in blocks[0] and "trainer.train()" in blocks[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(README.parent)}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    elapsed = time.monotonic() - start
    out = tmp_path / "out"
    for name in ("grace_config.json", "modules.json", "README.md", "model.safetensors", "training_curves.csv"):
        assert (out / name).is_file(), name
    assert "GRACE" in (out / "README.md").read_text()
    print(f"README script example: {elapsed:.0f} s")


def test_setup_commands_fit_a_fresh_machine():
    """Two commands, any Python >= 3.10, the pinned CPU torch, no DeepSpeed build for the CPU default."""
    first, test_cmd = section_code("## Set-up (fresh machine, CPU, offline-capable)", "bash")
    assert first.startswith("python3 -m venv .venv") and not re.search(r"python3\.\d", first)
    assert "pip install torch==2.13.0" in first and "deepspeed" not in first.lower()
    assert test_cmd.strip() == ('. .venv/bin/activate && pip install -e ".[test,deepspeed]" && '
                                'HF_HUB_OFFLINE=1 python -m pytest -q tests')
    text = README.read_text(encoding="utf-8")
    for needed in ("--index-url https://download.pytorch.org/whl/cpu", "Q4_1 GGUF",
                   "--model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct", "Python 3.10"):
        assert needed in text, needed
    # CI runs the block after the marker, exactly as .ci/run extracts it
    ci = (README.parent / ".ci" / "run").read_text()
    awk = re.search(r"TEST_CMD=\$\(awk '(.*?)' README.md\)", ci).group(1)
    extracted = subprocess.run(["awk", awk, str(README)], capture_output=True, text=True, check=True).stdout
    assert extracted.strip() == test_cmd.strip()
    setup = (README.parent / "setup.cfg").read_text()
    assert "python_requires = >=3.10" in setup
