"""Decoding rules that do not depend on the checkpoint's ``generation_config.json``.

``model.generate`` fills every field left unset (``None``) in the config it is given from the
model's own ``generation_config`` (a Qwen2.5-Instruct checkpoint brings ``repetition_penalty=1.05``,
``top_k=20`` ...). Rollouts, anchors and the encoder must decode under GRACE's rules only, the same
as vLLM given explicit sampling parameters, so generation runs with that config swapped for the
library defaults.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

# Rationale length in tokens (training's max_completion_length, the encoder's max_new_tokens) unless set.
DEFAULT_MAX_NEW_TOKENS = 256
# Rationale generators of GRACEEncoder: transformers' generate, or a vLLM engine (GPU; see docs/vllm.md).
BACKENDS = ("hf", "vllm")


@contextmanager
def ignoring_model_generation_config(model) -> Iterator[None]:
    """Within the block, ``model.generate`` sees only the fields of the config passed to it."""
    from transformers import GenerationConfig

    target = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT generates through it
    if not hasattr(target, "generation_config"):
        yield
        return
    saved = target.generation_config
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved
