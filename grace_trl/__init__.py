"""grace_trl: train LLMs as text embedders by contrastive policy optimisation over their own rationales."""

__version__ = "0.1.0"

import os as _os

# On a busy CPU, OpenMP threads that spin while waiting slow generation down by an order of
# magnitude (measured: 8x64 tokens on SmolLM2 took 257 s instead of 10 s next to one other busy
# process). Takes effect only if torch is not imported yet; an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .prompts import DEFAULT_SYSTEM_PROMPT, build_messages  # noqa: E402

__all__ = ["GRACEConfig", "GRACETrainer", "GRACEEncoder", "GRACESettings", "DEFAULT_SYSTEM_PROMPT", "build_messages",
           "load_sentence_transformer", "__version__"]


def __getattr__(name):  # heavy modules load on first use; embedding never needs TRL, so it is not imported here
    if name == "GRACESettings":
        from .settings import GRACESettings

        return GRACESettings
    if name == "GRACEConfig":
        from .config import GRACEConfig

        return GRACEConfig
    if name == "GRACETrainer":
        from .trainer import GRACETrainer

        return GRACETrainer
    if name == "GRACEEncoder":
        from .encoder import GRACEEncoder

        return GRACEEncoder
    if name == "load_sentence_transformer":
        from .st_module import load_sentence_transformer

        return load_sentence_transformer
    raise AttributeError(name)
