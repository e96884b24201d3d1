"""grace_trl: train LLMs as text embedders by contrastive policy optimisation over their own rationales."""

__version__ = "0.1.0"

from .config import GRACEConfig, GRACESettings  # noqa: E402
from .prompts import DEFAULT_SYSTEM_PROMPT, build_messages  # noqa: E402

__all__ = ["GRACEConfig", "GRACESettings", "DEFAULT_SYSTEM_PROMPT", "build_messages", "__version__"]


def __getattr__(name):  # heavy modules load on first use
    if name == "GRACETrainer":
        from .trainer import GRACETrainer

        return GRACETrainer
    if name == "GRACEEncoder":
        from .encoder import GRACEEncoder

        return GRACEEncoder
    raise AttributeError(name)
