"""GRACESettings: what an encoder must know to embed exactly as training did, saved as ``grace_config.json``.

Kept apart from :mod:`grace_trl.config` (training, built on TRL's ``GRPOConfig``) so that embedding,
evaluation, export and the Hub never import TRL.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

from .data import DEFAULT_MODE
from .files import atomic_write
from .generation import DEFAULT_MAX_NEW_TOKENS
from .pooling import DEFAULT_POOLING
from .prompts import DEFAULT_SYSTEM_PROMPT
from .rewards import DEFAULT_REWARD_VARIANT

SETTINGS_FILE = "grace_config.json"


@dataclass
class GRACESettings:
    """What an encoder must know to embed exactly as training did. Saved as ``grace_config.json``."""

    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    instruction: str | None = None
    pooling: str = DEFAULT_POOLING
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    mode: str = DEFAULT_MODE
    reward_variant: str = DEFAULT_REWARD_VARIANT
    # extra chat-template variables used in training (e.g. Qwen3's enable_thinking): part of the prompt
    chat_template_kwargs: dict | None = None

    def save(self, directory: str) -> str:
        path = os.path.join(directory, SETTINGS_FILE)
        with atomic_write(path) as f:
            json.dump(asdict(self), f, indent=2)
        return path

    @classmethod
    def load(cls, directory: str) -> "GRACESettings | None":
        """Settings saved next to a checkpoint, or None for a model never trained with GRACE."""
        path = os.path.join(directory, SETTINGS_FILE)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err}); delete it or save the settings again") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of settings, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


__all__ = ["GRACESettings", "SETTINGS_FILE"]
