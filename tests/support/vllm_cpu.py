"""Test support for running vLLM on CPU (the separate environment built by scripts/setup_vllm_env.sh).

Nothing here fakes vLLM: it sets vLLM's CPU runtime variables and passes extra arguments to the real
``vllm.LLM`` that TRL constructs in colocate mode (TRL exposes no ``enforce_eager`` setting, and on
CPU compiling the model costs about a minute of start-up per engine).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

# Two cores on the CI machine; a small KV cache (GiB) is plenty for test prompts.
CPU_VLLM_ENV = {
    "VLLM_CPU_OMP_THREADS_BIND": "0-1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # Keep the engine core in the test process: no spawned child re-importing pytest, and the model
    # object stays reachable for weight sync.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1",
}


def apply_cpu_vllm_env() -> None:
    """Set the CPU defaults above unless the caller already chose values (must run before an engine starts)."""
    for key, value in CPU_VLLM_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def trl_colocate_llm_overrides(**overrides: Any) -> Iterator[None]:
    """Add keyword arguments (e.g. ``enforce_eager=True, dtype="float32"``) to the ``vllm.LLM`` TRL builds."""
    import trl.generation.vllm_generation as trl_vllm

    original = trl_vllm.LLM

    def build(*args: Any, **kwargs: Any):
        kwargs.update(overrides)
        return original(*args, **kwargs)

    trl_vllm.LLM = build
    try:
        yield
    finally:
        trl_vllm.LLM = original
