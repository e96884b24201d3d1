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
# A rationale longer than this is a typo (1e8), not a setting; the model's context is checked when it loads.
MAX_NEW_TOKENS_LIMIT = 1 << 20


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
        settings = cls(**{k: v for k, v in data.items() if k in known})
        settings.validate(path)
        return settings

    def validate(self, source: str = SETTINGS_FILE) -> None:
        """Type and range checks, naming ``source`` and the key: a wrong value must not reach a chat template."""
        from .data import MODES
        from .pooling import POOLING_METHODS
        from .rewards import REWARD_VARIANTS

        def bad(key: str, expected: str):
            value = getattr(self, key)
            raise ValueError(f"{source}: {key} must be {expected}, got {value!r} ({type(value).__name__})")

        for key in ("system_prompt", "instruction"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                bad(key, "a string or null")
        if self.pooling not in POOLING_METHODS:
            bad("pooling", f"one of {list(POOLING_METHODS)}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or \
                not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            bad("max_new_tokens", f"an integer from 1 to {MAX_NEW_TOKENS_LIMIT}")
        if self.mode not in MODES:
            bad("mode", f"one of {list(MODES)}")
        if self.reward_variant not in REWARD_VARIANTS:
            bad("reward_variant", f"one of {list(REWARD_VARIANTS)}")
        if self.chat_template_kwargs is not None and not isinstance(self.chat_template_kwargs, dict):
            bad("chat_template_kwargs", "an object (mapping) or null")


__all__ = ["GRACESettings", "SETTINGS_FILE"]
