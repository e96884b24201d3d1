"""GRACEConfig: GRPOConfig plus the fields that turn rationales into embeddings.

Defaults follow the GRACE paper (λ1 = λ2 = 0.2, τ = 0.1, γ = 1, anchors at T = 0.5, rollouts at
T = 1.0, no KL, no std scaling of rewards, ε = 0.2, lr 1e-6) except ``reward_variant``, which
defaults to ``"effective"``: see :mod:`grace_trl.rewards` for why.

Loss aggregation is the reference implementation's (verl ``token-mean`` over the mini-batch, TRL
``loss_type="dapo"``): every generated token weighs the same, so a long rationale is not
down-weighted per token as under per-sequence normalisation (``"grpo"``). The reference makes
``ppo_mini_batch_size / rollout batch`` = 4 optimiser updates per generated batch; in TRL that is
``steps_per_generation: 4`` (see the GPU recipes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from .checks import validate_config_values
from .data import DEFAULT_MODE, MODES
from .generation import DEFAULT_MAX_NEW_TOKENS
from .pooling import DEFAULT_POOLING, POOLING_METHODS
from .prompts import DEFAULT_SYSTEM_PROMPT, normalize_system_prompt
from .rewards import (
    DEFAULT_LAMBDA_CONSISTENCY,
    DEFAULT_LAMBDA_CROSS,
    DEFAULT_REWARD_VARIANT,
    DEFAULT_TAU,
    DEFAULT_TRUNCATION_PENALTY,
    REWARD_VARIANTS,
)
from .settings import SETTINGS_FILE, GRACESettings  # noqa: F401  (re-exported: grace_trl.config.GRACESettings)


def _native_activation_checkpointing() -> bool:
    """Whether transformers has ``activation_checkpointing`` (5.23+, where ``gradient_checkpointing`` is its alias)."""
    from transformers import TrainingArguments

    return "activation_checkpointing" in TrainingArguments.__dataclass_fields__


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
        fuse_anchor_generation (`bool`, *optional*, defaults to `True`):
            Sample the anchor rationales in the same `generate` call as the rollouts (one decode per step
            instead of two), at `anchor_temperature` per row. HF generation only (vLLM keeps its own anchor
            request). `top_p`/`top_k`/`min_p` filter the anchor rows at the anchor temperature (transformers applies
            the per-row temperature before its sampling filters), as a separate anchor decode (`False`) does.
        merge_lora_for_generation (`bool`, *optional*, defaults to `True`):
            With a LoRA policy (`use_peft`), decode rollouts and anchors, and pool the reward's embeddings, through
            the adapter merged into the base weights; the frozen weights are restored bit for bit afterwards.
            Faster on CPU (the unmerged adapter adds two matmuls per linear layer per decoded token), and LoRA
            dropout is then off while sampling, as it is for a full fine-tuning policy (`lora_dropout` still
            applies to the loss). The dev evaluation runs in eval mode (no dropout) and always decodes merged.
            HF generation with fp32 base weights, without DeepSpeed or FSDP, only: merged into bf16 weights the
            adapter's update would partly round away (GPU LoRA recipes load the base in bf16 and decode through the
            adapter); vLLM syncs merged weights itself.
        contrastive_weight (`float`, *optional*, defaults to `0.0`):
            Weight of an auxiliary InfoNCE term on the rollouts' pooled hidden states, computed in the policy
            loss forward (no extra pass): each rollout of the positive document is pulled towards its group's
            query anchor and pushed from every other anchor of the generation batch (other queries, hard
            negatives); anchors are detached targets. `0` is pure GRACE (the paper).
        contrastive_temperature (`float`, *optional*, defaults to `0.05`):
            Temperature of that InfoNCE term.
        embedding_evaluator (`str` or `None`, *optional*, defaults to `None`):
            `"sts-dev"` (STS-B dev pairs) or `"retrieval-dev"` (SciFact train queries): embeds a dev set with the
            current policy exactly as `GRACEEncoder` does whenever the trainer evaluates (`eval_strategy`,
            `eval_steps`) and logs `eval_sts_spearman` / `eval_retrieval_ndcg_at_10`, usable as
            `metric_for_best_model`. Reads `embedding_eval_data_dir` (default `$GRACE_TRL_DATA_DIR` or
            `../shared/data`).
        embedding_eval_limit (`int` or `None`, *optional*, defaults to `None`):
            Seeded subset size of the dev set (default 200 STS pairs / 50 retrieval queries).
        embedding_eval_data_dir (`str` or `None`, *optional*, defaults to `None`):
            Folder holding `STSBenchmark/` and `SciFact/`.
        embedding_eval_without_rationale (`bool`, *optional*, defaults to `False`):
            Also score STS without the rationale (`eval_sts_spearman_no_rationale`).
        embedding_eval_cache_dir (`str` or `None`, *optional*, defaults to `None`):
            Rationale cache for the evaluation of the *untrained* policy (step 0, e.g. `eval_on_start`): its dev
            rationales depend only on the starting weights, so a second run from the same model reads them
            back instead of decoding them again. Default `<GRACE_TRL_CACHE or ~/.cache/grace_trl>/rationales`;
            `"none"` turns it off. Entries are keyed by a content fingerprint of the weights and the prompt.
        generation_check (`bool`, *optional*, defaults to `False`):
            Check at the end of training that the model still writes: greedy answers to 60 fixed questions and
            perplexity on held-out prose (:mod:`grace_trl.evaluation.generation_check`), against the starting
            model's (computed before the first step, cached by weight fingerprint). Written to
            `output_dir/generation_check.json`, logged, and summarised in the model card. About a minute per
            model on 2 CPU cores.
        max_train_minutes (`float` or `None`, *optional*, defaults to `None`):
            Wall-clock training budget: training stops (and saves) after the step that crosses it, whatever
            `max_steps` says. Makes recipes comparable by compute rather than by step count.
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            A fresh run into an `output_dir` that holds an earlier run is refused unless this is set (then
            the old `rationale_samples.jsonl` and `checkpoint-*` folders are removed) or the run resumes.
        activation_checkpointing (`bool`, *optional*, defaults to `True`):
            Recompute activations in the backward pass to save memory (TRL's default: on). transformers 5.23
            renamed `gradient_checkpointing` to this; the old key still works (transformers warns that it is
            deprecated), and on an older transformers (the vLLM CPU environment pins 5.19) this name is passed
            on as the old one.
        activation_checkpointing_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            Keyword arguments of the checkpointing, e.g. `{"use_reentrant": false}`; formerly
            `gradient_checkpointing_kwargs` (still accepted, as above).
    """

    mode: str = field(default=DEFAULT_MODE, metadata={"help": "'supervised' or 'unsupervised'."})
    system_prompt: str | None = field(default=DEFAULT_SYSTEM_PROMPT,
                                      metadata={"help": "System message; None for none."})
    instruction: str | None = field(default=None, metadata={"help": "Task instruction prepended to each text."})
    pooling: str = field(default=DEFAULT_POOLING, metadata={"help": "'mean', 'rationale' or 'last'."})
    lambda_consistency: float = field(default=DEFAULT_LAMBDA_CONSISTENCY, metadata={
        "help": "λ1: intra-group consistency weight."})
    lambda_cross: float = field(default=DEFAULT_LAMBDA_CROSS, metadata={
        "help": "λ2: cross-group (in-batch negative) weight."})
    tau: float = field(default=DEFAULT_TAU, metadata={"help": "τ: reward temperature (reward is divided by it)."})
    truncation_penalty: float = field(default=DEFAULT_TRUNCATION_PENALTY, metadata={
        "help": "γ: reward of a truncated rollout is −γ."})
    anchor_temperature: float = field(default=0.5, metadata={"help": "Sampling temperature of anchor rationales."})
    num_negatives: int = field(default=1, metadata={"help": "Hard negatives per supervised row."})
    reward_variant: str = field(default=DEFAULT_REWARD_VARIANT, metadata={"help": "'paper' or 'effective'."})
    embedding_batch_size: int = field(default=16, metadata={"help": "Sequences per pooling forward pass."})
    num_sample_rationales: int = field(default=2, metadata={"help": "Sample rationales logged per logging step."})
    fuse_anchor_generation: bool = field(default=True, metadata={
        "help": "Sample anchors in the rollouts' generate call (HF generation)."})
    merge_lora_for_generation: bool = field(default=True, metadata={
        "help": "LoRA: decode and pool through the merged adapter (weights restored after)."})
    contrastive_weight: float = field(default=0.0, metadata={
        "help": "Weight of the auxiliary InfoNCE term on rollouts' pooled hidden states (0 = pure GRACE)."})
    contrastive_temperature: float = field(default=0.05, metadata={"help": "Temperature of the InfoNCE term."})
    embedding_evaluator: str | None = field(default=None, metadata={
        "help": "Dev-set embedding evaluator run at eval_steps: 'sts-dev' or 'retrieval-dev'."})
    embedding_eval_limit: int | None = field(default=None, metadata={"help": "Seeded dev subset size."})
    embedding_eval_data_dir: str | None = field(default=None, metadata={
        "help": "Folder with STSBenchmark/ and SciFact/ (default $GRACE_TRL_DATA_DIR or ../shared/data)."})
    embedding_eval_without_rationale: bool = field(default=False, metadata={
        "help": "Also log the no-rationale STS score."})
    embedding_eval_cache_dir: str | None = field(default=None, metadata={
        "help": "Rationale cache for the untrained policy's evaluation (default ~/.cache/grace_trl/rationales; "
                "'none' = off)."})
    generation_check: bool = field(default=False, metadata={
        "help": "At the end, score 60 fixed chat questions and perplexity against the starting model "
                "(regressions = answers the starting model got right and the trained one does not)."})
    max_train_minutes: float | None = field(default=None, metadata={
        "help": "Stop training after this many wall-clock minutes (the running step finishes)."})

    # GRPO defaults changed to the paper's optimisation settings.
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (paper: 1e-6)."})
    num_generations: int | None = field(default=8, metadata={"help": "G: rollouts per positive document."})
    max_completion_length: int | None = field(default=DEFAULT_MAX_NEW_TOKENS, metadata={
        "help": "Max rationale tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Rollout sampling temperature."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient (GRACE: 0)."})
    epsilon: float = field(default=0.2, metadata={"help": "PPO clip ε."})
    scale_rewards: str = field(default="none", metadata={"help": "GRACE: group mean baseline, no std scaling."})
    loss_type: str = field(default="dapo", metadata={
        "help": "Loss aggregation; 'dapo' = token mean over the batch, the reference implementation's 'token-mean'."})
    remove_unused_columns: bool | None = field(default=False, metadata={"help": "Keep query/negatives columns."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start over in an output_dir that holds an earlier run (its samples and checkpoints are removed)."})
    # transformers 5.23 renamed gradient_checkpointing(_kwargs) to activation_checkpointing(_kwargs) and warns on
    # the old names; TRL 1.16 still defaults the old one to True, which made every GRACEConfig warn. Both names
    # default to unset here and _resolve_activation_checkpointing applies TRL's default through the new one.
    activation_checkpointing: bool | None = field(default=None, metadata={
        "help": "Recompute activations in the backward pass to save memory (default: on).", "nargs": "?",
        "const": True})
    activation_checkpointing_kwargs: dict[str, Any] | str | None = field(default=None, metadata={
        "help": "Keyword arguments of activation checkpointing, e.g. '{\"use_reentrant\": false}'."})
    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "Deprecated alias of activation_checkpointing (transformers 5.23).", "nargs": "?", "const": True})
    gradient_checkpointing_kwargs: dict[str, Any] | str | None = field(default=None, metadata={
        "help": "Deprecated alias of activation_checkpointing_kwargs (transformers 5.23)."})
    # JSON strings from the command line become dicts (transformers < 5.23 does not list the new name)
    _VALID_DICT_FIELDS = list(dict.fromkeys([*GRPOConfig._VALID_DICT_FIELDS, "activation_checkpointing_kwargs"]))

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
        if self.max_train_minutes is not None and not self.max_train_minutes > 0:
            raise ValueError(f"max_train_minutes must be > 0, got {self.max_train_minutes}")
        if self.contrastive_weight < 0:
            raise ValueError(f"contrastive_weight must be >= 0, got {self.contrastive_weight}")
        if self.contrastive_temperature <= 0:
            raise ValueError(f"contrastive_temperature must be > 0, got {self.contrastive_temperature}")
        if self.embedding_evaluator is not None and self.embedding_evaluator.lower() in ("none", "null", ""):
            self.embedding_evaluator = None
        if self.embedding_evaluator is not None:
            from .evaluation.evaluators import EVALUATOR_NAMES

            if self.embedding_evaluator not in EVALUATOR_NAMES:
                raise ValueError(
                    f"embedding_evaluator must be one of {EVALUATOR_NAMES}, got {self.embedding_evaluator!r}")
        if self.anchor_temperature < 0:
            raise ValueError(f"anchor_temperature must be >= 0, got {self.anchor_temperature}")
        if self.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
            raise ValueError("GRACE does not support FSDP (its fused decode, embedding pass and evaluator need the "
                             "full parameters); use DeepSpeed ZeRO-2/3 (--accelerate_config zero2 or zero3)")
        eval_generations = self.num_generations_eval or self.num_generations
        if self.eval_strategy != "no" and self.per_device_eval_batch_size % eval_generations:
            # TRL checks the global eval batch only: with 2 processes, 4 rows each and 8 generations it passes,
            # and each process then holds half a group
            raise ValueError(
                f"per_device_eval_batch_size ({self.per_device_eval_batch_size}) must be a multiple of "
                f"num_generations_eval ({eval_generations}) so that every evaluation group stays on one process "
                "(GRACE generates one set of anchors per group)."
            )
        self.system_prompt = normalize_system_prompt(self.system_prompt)
        self._resolve_activation_checkpointing()
        super().__post_init__()
        if not _native_activation_checkpointing():
            # the old names are the ones transformers < 5.23 reads; the new ones mirror them, as 5.23+ does the other
            # way round
            self.activation_checkpointing = self.gradient_checkpointing
            self.activation_checkpointing_kwargs = self.gradient_checkpointing_kwargs
        per_process = self.per_device_train_batch_size * self.steps_per_generation
        if per_process % self.num_generations != 0:
            raise ValueError(
                f"per_device_train_batch_size × steps_per_generation ({per_process}) must be a multiple of "
                f"num_generations ({self.num_generations}) so that every group of rollouts stays on one process "
                "(GRACE generates one set of anchors per group)."
            )

    def _resolve_activation_checkpointing(self) -> None:
        """Checkpointing on unless set, under either name; the two names may not disagree.

        With neither name set the new one takes TRL's default (on), so transformers sees no deprecated key. A
        recipe with the old name keeps working: transformers 5.23+ copies it to the new one with a FutureWarning.
        On transformers < 5.23 the new name is GRACE's own field and is copied to the old one, which that
        version reads.
        """
        pairs = (("activation_checkpointing", "gradient_checkpointing"),
                 ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs"))
        for new, old in pairs:
            value, alias = getattr(self, new), getattr(self, old)
            if value is not None and alias is not None and value != alias:
                raise ValueError(f"GRACEConfig: {new}={value!r} and its deprecated alias {old}={alias!r} disagree; "
                                 f"set {new} only")
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True  # TRL's default
        if not _native_activation_checkpointing():
            for new, old in pairs:
                if getattr(self, new) is not None:
                    setattr(self, old, getattr(self, new))

    def grace_settings(self) -> GRACESettings:
        return GRACESettings(
            system_prompt=self.system_prompt,
            instruction=self.instruction,
            pooling=self.pooling,
            max_new_tokens=int(self.max_completion_length or DEFAULT_MAX_NEW_TOKENS),
            mode=self.mode,
            reward_variant=self.reward_variant,
            chat_template_kwargs=dict(self.chat_template_kwargs) if self.chat_template_kwargs else None,
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
