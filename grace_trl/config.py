"""GRACEConfig: GRPOConfig plus the fields that turn rationales into embeddings.

Defaults follow the GRACE paper (λ1 = λ2 = 0.2, τ = 0.1, γ = 1, anchors at T = 0.5, rollouts at
T = 1.0, no KL, no std scaling of rewards, ε = 0.2, lr 1e-6) except ``reward_variant``, which
defaults to ``"effective"``: see :mod:`grace_trl.rewards` for why.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from trl import GRPOConfig

from .checks import validate_config_values
from .pooling import POOLING_METHODS
from .prompts import DEFAULT_SYSTEM_PROMPT

SETTINGS_FILE = "grace_config.json"
MODES = ("supervised", "unsupervised")
REWARD_VARIANTS = ("paper", "effective")


@dataclass
class GRACESettings:
    """What an encoder must know to embed exactly as training did. Saved as ``grace_config.json``."""

    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    instruction: str | None = None
    pooling: str = "mean"
    max_new_tokens: int = 256
    mode: str = "supervised"
    reward_variant: str = "effective"

    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, SETTINGS_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=2)
        os.replace(tmp, path)
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


@dataclass
class GRACEConfig(GRPOConfig):
    r"""
    Configuration for [`GRACETrainer`]. Every [`~trl.GRPOConfig`] field is accepted as well.

    Parameters:
        mode (`str`, *optional*, defaults to `"supervised"`):
            `"supervised"`: rows are (query, positive, negatives); the positive document is the trained
            prompt. `"unsupervised"`: rows are single texts; an anchor rationale of the same text is the
            positive.
        system_prompt (`str` or `None`):
            System message of every prompt (queries and documents alike). `None` sends no system message.
        instruction (`str` or `None`, *optional*, defaults to `None`):
            Task instruction prepended to every text in the user turn.
        pooling (`str`, *optional*, defaults to `"mean"`):
            `"mean"` over user content + rationale, `"rationale"` over generated tokens, `"last"` token.
        lambda_consistency (`float`, *optional*, defaults to `0.2`):
            λ1, weight of the mean cosine between a rollout and the other rollouts of its group.
        lambda_cross (`float`, *optional*, defaults to `0.2`):
            λ2, weight of the penalty for similarity to other groups (in-batch negatives).
        tau (`float`, *optional*, defaults to `0.1`):
            Temperature τ: the bracketed reward is divided by it.
        truncation_penalty (`float`, *optional*, defaults to `1.0`):
            γ: a rollout that hits `max_completion_length` without EOS gets reward −γ instead.
        anchor_temperature (`float`, *optional*, defaults to `0.5`):
            Sampling temperature of the untrained anchor rationales (query, negatives, unsupervised anchor).
        num_negatives (`int`, *optional*, defaults to `1`):
            Hard negatives per supervised row; every row must have exactly this many (0 allowed).
        reward_variant (`str`, *optional*, defaults to `"effective"`):
            `"paper"` reproduces the published reward, whose negative and cross-group terms are constant
            within a group and cancel against the group-mean baseline. `"effective"` makes them depend on
            the rollout: −cos(p_k, n) and −max_{g'≠g} cos(p_k, q_{g'}).
        embedding_batch_size (`int`, *optional*, defaults to `16`):
            Sequences per forward pass when pooling embeddings for the reward.
        num_sample_rationales (`int`, *optional*, defaults to `2`):
            Rationales written to the log at every logging step.
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            A fresh run into an `output_dir` that holds an earlier run is refused unless this is set (then
            the old `rationale_samples.jsonl` and `checkpoint-*` folders are removed) or the run resumes.
    """

    mode: str = field(default="supervised", metadata={"help": "'supervised' or 'unsupervised'."})
    system_prompt: str | None = field(default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "System message; None for none."})
    instruction: str | None = field(default=None, metadata={"help": "Task instruction prepended to each text."})
    pooling: str = field(default="mean", metadata={"help": "'mean', 'rationale' or 'last'."})
    lambda_consistency: float = field(default=0.2, metadata={"help": "λ1: intra-group consistency weight."})
    lambda_cross: float = field(default=0.2, metadata={"help": "λ2: cross-group (in-batch negative) weight."})
    tau: float = field(default=0.1, metadata={"help": "τ: reward temperature (reward is divided by it)."})
    truncation_penalty: float = field(default=1.0, metadata={"help": "γ: reward of a truncated rollout is −γ."})
    anchor_temperature: float = field(default=0.5, metadata={"help": "Sampling temperature of anchor rationales."})
    num_negatives: int = field(default=1, metadata={"help": "Hard negatives per supervised row."})
    reward_variant: str = field(default="effective", metadata={"help": "'paper' or 'effective'."})
    embedding_batch_size: int = field(default=16, metadata={"help": "Sequences per pooling forward pass."})
    num_sample_rationales: int = field(default=2, metadata={"help": "Sample rationales logged per logging step."})

    # GRPO defaults changed to the paper's optimisation settings.
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (paper: 1e-6)."})
    num_generations: int | None = field(default=8, metadata={"help": "G: rollouts per positive document."})
    max_completion_length: int | None = field(default=256, metadata={"help": "Max rationale tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Rollout sampling temperature."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient (GRACE: 0)."})
    epsilon: float = field(default=0.2, metadata={"help": "PPO clip ε."})
    scale_rewards: str = field(default="none", metadata={"help": "GRACE: group mean baseline, no std scaling."})
    loss_type: str = field(default="grpo", metadata={"help": "GRPO loss aggregation (see GRPOConfig)."})
    remove_unused_columns: bool | None = field(default=False, metadata={"help": "Keep query/negatives columns."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start over in an output_dir that holds an earlier run (its samples and checkpoints are removed)."})

    def __post_init__(self):
        validate_config_values(self)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.pooling not in POOLING_METHODS:
            raise ValueError(f"pooling must be one of {POOLING_METHODS}, got {self.pooling!r}")
        if self.reward_variant not in REWARD_VARIANTS:
            raise ValueError(f"reward_variant must be one of {REWARD_VARIANTS}, got {self.reward_variant!r}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {self.num_negatives}")
        if self.anchor_temperature < 0:
            raise ValueError(f"anchor_temperature must be >= 0, got {self.anchor_temperature}")
        if isinstance(self.system_prompt, str) and self.system_prompt.lower() in ("none", "null", ""):
            self.system_prompt = None
        super().__post_init__()
        per_process = self.per_device_train_batch_size * self.steps_per_generation
        if per_process % self.num_generations != 0:
            raise ValueError(
                f"per_device_train_batch_size × steps_per_generation ({per_process}) must be a multiple of "
                f"num_generations ({self.num_generations}) so that every group of rollouts stays on one process "
                "(GRACE generates one set of anchors per group)."
            )

    def grace_settings(self) -> GRACESettings:
        return GRACESettings(
            system_prompt=self.system_prompt,
            instruction=self.instruction,
            pooling=self.pooling,
            max_new_tokens=int(self.max_completion_length or 256),
            mode=self.mode,
            reward_variant=self.reward_variant,
        )

    def reward_params(self) -> dict[str, Any]:
        return dict(
            mode=self.mode,
            variant=self.reward_variant,
            lambda_consistency=self.lambda_consistency,
            lambda_cross=self.lambda_cross,
            tau=self.tau,
            truncation_penalty=self.truncation_penalty,
        )
