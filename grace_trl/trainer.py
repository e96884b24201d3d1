"""GRACETrainer: GRPO whose reward is the contrastive quality of the policy's own rationales.

Each row's trained prompt is the positive document (supervised) or the text (unsupervised); TRL
samples G rollouts of it. Before the rewards are computed, the trainer generates one untrained
anchor rationale per group (query and negatives, or the text again) at ``anchor_temperature``,
embeds rollouts and anchors with the current policy (:meth:`GRACETrainer.compute_embeddings`), and
hands the gathered vectors to the reward functions as the ``grace_embeddings`` keyword. Anchors
never enter the loss batch, so they get no advantage and no gradient.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import warnings
from contextlib import contextmanager, nullcontext
from typing import Sequence

import torch
import torch.nn.functional as F
import trl
from datasets import Dataset
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.trainer_utils import IntervalStrategy
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation

from .aliases import resolve_model_name
from .checks import (
    OutputDirLock,
    StepHealth,
    check_fresh_output_dir,
    check_resumed_run,
    check_text_lengths,
    check_trl_overrides,
    check_trl_version,
    checkpoint_step,
    context_length,
    finite_or_none,
    remove_orphaned_temp_files,
    remove_save_marker,
    resolve_resume_checkpoint,
    trim_samples,
    write_save_marker,
)
from .config import GRACEConfig
from .data import add_prompts, check_embeddable, check_prompt_column, validate_dataset
from .generation import (
    eos_token_ids,
    generate_left_padded,
    ignoring_model_generation_config,
    lora_merged,
    pad_token_id,
)
from .model_card import PAPER
from .pooling import embed_token_sequences, get_backbone, masked_mean, pool_span
from .prompts import PromptEncoder
from .rewards import GRACEReward, RolloutEmbeddings, build_reward_funcs

logger = logging.getLogger(__name__)

# transformers 5.23 deprecations raised inside TRL 1.16's generation context (see quiet_trl_checkpointing)
TRL_CHECKPOINTING_DEPRECATIONS = r"`(is_gradient_checkpointing|gradient_checkpointing_(enable|disable))` is deprecated"


@contextmanager
def quiet_trl_checkpointing():
    """TRL 1.16 (pinned) calls transformers' deprecated ``is_gradient_checkpointing`` and
    ``gradient_checkpointing_disable/_enable`` around every generation and embedding pass: FutureWarnings that no
    GRACE user can act on (the recipes already use the new ``activation_checkpointing`` key)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TRL_CHECKPOINTING_DEPRECATIONS, category=FutureWarning)
        yield

SAMPLES_FILE = "rationale_samples.jsonl"
RUN_FILE = "grace_run.json"  # what a resumed run must share with its checkpoint (see checks.check_resumed_run)
# Optimisation settings recorded in RUN_FILE: changing one on resume is allowed, with a warning.
OPTIMISATION_KEYS = ("learning_rate", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay",
                     "max_grad_norm", "per_device_train_batch_size", "gradient_accumulation_steps",
                     "steps_per_generation", "num_generations", "temperature", "anchor_temperature", "beta", "epsilon",
                     "loss_type", "reward_variant", "lambda_consistency", "lambda_cross", "tau", "truncation_penalty",
                     "contrastive_weight", "contrastive_temperature", "seed")

check_trl_version(trl.__version__)
check_trl_overrides(GRPOTrainer)


class RowTemperature(LogitsProcessor):
    """Per-row temperature on top of the generation config's: row i's logits end up divided by ``temps[i]``.

    transformers (5.24) runs custom processors before its sampling warpers: this one multiplies by
    ``base / temps[i]``, the config's temperature (``base``) then divides by ``base``, and top-k/top-p/min-p
    filter each row at its own temperature, as a separate decode would. A temperature of 0 keeps only
    the arg-max token (greedy) for that row. ``test_row_temperature_runs_before_the_sampling_warpers``
    pins that order.
    """

    def __init__(self, temps: Sequence[float], base: float):
        self.scale = torch.tensor([base / t if t > 0 else 1.0 for t in temps], dtype=torch.float32)
        self.greedy = torch.tensor([t <= 0 for t in temps])

    def __call__(self, input_ids, scores):
        scale = self.scale.to(scores.device, scores.dtype).unsqueeze(1)
        scores = scores * scale
        if bool(self.greedy.any()):
            greedy = self.greedy.to(scores.device)
            top = scores.argmax(dim=-1, keepdim=True)
            only_top = torch.full_like(scores, float("-inf")).scatter(1, top, 0.0)
            scores = torch.where(greedy.unsqueeze(1), scores + only_top, scores)
        return scores


def projected_evaluation_seconds(elapsed: float, decode_seconds: float, decoded: int, remaining: int) -> float:
    """Seconds a whole dev-set evaluation takes, projected from its first ``decoded`` rationales.

    ``elapsed`` is the time since the evaluation started, ``decode_seconds`` the part of it spent decoding those
    rationales, ``remaining`` the rationales still to decode. Decoding dominates, so the pooling passes are left
    out; the first rationales being those of the longest texts tends to make it an overestimate.
    """
    if decoded < 1 or remaining < 0 or not 0 <= decode_seconds <= elapsed:
        raise ValueError(f"cannot project from {decoded} rationales decoded in {decode_seconds} of {elapsed} s "
                         f"with {remaining} to go")
    return elapsed + decode_seconds / decoded * remaining


def format_seconds(seconds: float) -> str:
    """``"45 s"``, ``"3.5 min"`` or ``"1.2 h"``: a duration as a person reads it in a log."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class GRACETrainer(GRPOTrainer):
    """Drop-in replacement for :class:`trl.GRPOTrainer` that trains a generative embedder.

    Args:
        model: model id, local path, embedded alias (``"smollm2-135m"``) or a loaded causal LM.
        reward_funcs: reward callables or registry names; default ``["grace"]``. Extra functions
            receive the usual TRL keywords plus ``grace_embeddings`` and are weighted by
            ``args.reward_weights``.
        args: a :class:`GRACEConfig`.
        train_dataset: canonical GRACE columns (see :mod:`grace_trl.data`); the ``prompt`` column is
            built here when absent.
        Other arguments are passed to :class:`trl.GRPOTrainer` unchanged.
    """

    # TRL's model-card fields: what ``create_model_card`` and ``push_to_hub`` say about the model
    _tag_names = ["trl", "grace", "sentence-transformers", "feature-extraction", "sentence-similarity"]
    _name = "GRACE"
    _paper = PAPER

    def __init__(self, model, reward_funcs=None, args: GRACEConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, evaluator=None, **kwargs):
        if args is None:
            args = GRACEConfig(output_dir="grace-output")
        if not isinstance(args, GRACEConfig):
            raise TypeError(f"GRACETrainer needs a GRACEConfig, got {type(args).__name__}")
        if isinstance(model, str):
            model = resolve_model_name(model)
        reward_funcs = ["grace"] if reward_funcs is None else reward_funcs
        if not isinstance(reward_funcs, (list, tuple)):
            reward_funcs = [reward_funcs]
        reward_funcs = [build_reward_funcs([f], args)[0] if isinstance(f, str) else f for f in reward_funcs]
        train_dataset = self._prepare_dataset(train_dataset, args, "train_dataset")
        if eval_dataset is not None:
            eval_dataset = self._prepare_dataset(eval_dataset, args, "eval_dataset")
        self._check_context_fits(model, processing_class, args, {"train_dataset": train_dataset,
                                                                 "eval_dataset": eval_dataset})
        build_ctx = nullcontext()
        if args.use_vllm and args.vllm_mode == "colocate":
            # On CPU, vLLM repacks linear weights after loading and TRL's weight sync cannot reach them;
            # the patch keeps the engine computing from live weights (no-op on GPU).
            from .vllm_backend import cpu_weight_sync_patch

            build_ctx = cpu_weight_sync_patch()
        if evaluator is None and args.embedding_evaluator:
            from .evaluation.evaluators import build_evaluator

            evaluator = build_evaluator(args.embedding_evaluator, args.embedding_eval_data_dir,
                                        limit=args.embedding_eval_limit, seed=args.seed,
                                        max_new_tokens=args.max_completion_length,
                                        batch_size=args.embedding_batch_size,
                                        without_rationale=args.embedding_eval_without_rationale)
        if evaluator is not None and not callable(evaluator):
            raise TypeError(f"evaluator must be a callable taking a GRACEEncoder, got {type(evaluator).__name__}")
        if evaluator is not None and eval_dataset is None and args.load_best_model_at_end:
            # no eval dataset, no eval_loss: the best model can only be chosen on one of the evaluator's scores
            name = getattr(evaluator, "name", "embedding")
            metric = args.metric_for_best_model or "loss"
            if not (metric if metric.startswith("eval_") else f"eval_{metric}").startswith(f"eval_{name}_"):
                raise ValueError(f"metric_for_best_model={metric!r}: with load_best_model_at_end and the embedding "
                                 f"evaluator as the only evaluation it must be one of its scores, "
                                 f"eval_{name}_<metric> (e.g. eval_sts_spearman)")
        self.embedding_evaluator = evaluator
        # transformers refuses eval_strategy without an eval_dataset; an embedding evaluator is evaluation enough.
        eval_strategy = args.eval_strategy
        if evaluator is not None and eval_dataset is None:
            args.eval_strategy = IntervalStrategy.NO
        try:
            with build_ctx:
                super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                                 eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        finally:
            args.eval_strategy = eval_strategy
        from transformers.trainer_callback import ProgressCallback

        from .callbacks import GRACEProgressCallback, TimeBudgetCallback, TrainingCurvesCallback

        self.add_callback(TrainingCurvesCallback())
        if any(isinstance(cb, ProgressCallback) for cb in self.callback_handler.callbacks):
            # progress against max_train_minutes when a budget ends the run; short numeric log lines
            self.remove_callback(ProgressCallback)
            self.add_callback(GRACEProgressCallback(args.max_train_minutes))
        if args.max_train_minutes:
            self.add_callback(TimeBudgetCallback(args.max_train_minutes))
        self._grace_rows = None  # rows of the generation batch being generated (for fused anchors)
        self._grace_fused_anchors = None  # anchor completions sampled with the rollouts
        self._grace_evaluating = False  # inside evaluate(): the nested calls for a dict of eval sets are TRL's only
        self._grace_pending_scores = None  # embedding scores waiting for the evaluation loop's metrics
        self._grace_contrastive = None  # (anchor bank, group ids, pooling spans) of the last training generation
        # where a run's time goes (written to output_dir/timing.json at the end of train())
        self._grace_timing = dict.fromkeys(("generation_seconds", "generation_and_scoring_seconds",
                                            "evaluation_seconds", "rollouts"), 0)
        if self.is_deepspeed_enabled and not args.ds3_gather_for_generation:
            ds_stage = self.accelerator.state.deepspeed_plugin.zero_stage
            if ds_stage == 3:
                raise ValueError("GRACE embeds rollouts inside the generation context; with ZeRO-3 keep "
                                 "ds3_gather_for_generation=True")
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        self.grace_tokenizer = tokenizer
        self.prompt_encoder = PromptEncoder(tokenizer, args.system_prompt, args.instruction,
                                            self.args.chat_template_kwargs)
        self._grace_eos_ids = eos_token_ids(self.model, tokenizer)
        self._check_embeddable(self.train_dataset)
        self._check_embeddable(self.eval_dataset)

    # ------------------------------------------------------------------ data
    @staticmethod
    def _prepare_dataset(dataset, args: GRACEConfig, name: str):
        if dataset is None:
            raise ValueError(f"{name} is required")
        if isinstance(dataset, dict):
            return {k: GRACETrainer._prepare_dataset(v, args, f"{name}[{k}]") for k, v in dataset.items()}
        if isinstance(dataset, Dataset):
            validate_dataset(dataset, args.mode, args.num_negatives)
            if "prompt" in dataset.column_names:
                check_prompt_column(dataset, args.mode, args.system_prompt, args.instruction)
            else:
                dataset = add_prompts(dataset, args.mode, args.system_prompt, args.instruction)
        return dataset

    def _check_embeddable(self, dataset) -> None:
        """Every text must give a prompt GRACE can pool (and vLLM can extend) before the first step runs."""
        if isinstance(dataset, dict):
            for part in dataset.values():
                self._check_embeddable(part)
        elif isinstance(dataset, Dataset):
            limit = self.args.vllm_max_model_length if self.use_vllm else None
            check_embeddable(dataset, self.args.mode, self.prompt_encoder, self.args.num_negatives, limit)

    # ------------------------------------------------------------- embedding
    def compute_embeddings(self, model, sequences: Sequence[Sequence[int]],
                           spans: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Pooled, L2-normalised vectors (N, d) for token sequences; override to change pooling.

        Called on every process with the same number of sequences, inside the generation context
        (ZeRO-3 parameters gathered, PEFT adapters active), under ``torch.no_grad``. Must return
        pooled vectors only.
        """
        pad = self._grace_pad_id()
        # Prefix sharing makes two forward calls per batch; under ZeRO-3 without gathered parameters every
        # forward is a collective, so keep the call count independent of the data there.
        zero3_ungathered = (self.is_deepspeed_enabled and not self.args.ds3_gather_for_generation
                            and self.accelerator.state.deepspeed_plugin.zero_stage == 3)
        return embed_token_sequences(model, sequences, spans, pad, batch_size=self.args.embedding_batch_size,
                                     share_prefix=not zero3_ungathered)

    def _generate_anchor_completions(self, model, prompt_ids: list[list[int]]) -> list[list[int]]:
        """One rationale per anchor prompt at ``anchor_temperature`` (HF generate)."""
        if not prompt_ids:
            return []
        config = GenerationConfig(**self._anchor_generation_kwargs(self._grace_pad_id()))
        # the encoder's HF backend decodes through the same function
        return generate_left_padded(model, prompt_ids, self._grace_pad_id(), self._grace_eos_ids,
                                    device=self.accelerator.device, generation_config=config)

    def _lora_merged(self, unwrapped, always: bool = False, hf_generate: bool = True):
        """Merged LoRA weights where they are whole on this process (no DeepSpeed, no FSDP).

        Rollouts and the reward's pooling run in train mode, where merging also drops LoRA dropout, so they follow
        ``merge_lora_for_generation``; the dev evaluation (``always``) runs in eval mode, where the merged model is
        the adapter's function, so it always merges. vLLM and continuous batching (``hf_generate=False``) decode
        with weights of their own, so nothing is merged for them.
        """
        enabled = ((always or self.args.merge_lora_for_generation) and hf_generate and not self.is_deepspeed_enabled
                   and not self.is_fsdp_enabled)
        return lora_merged(unwrapped, enabled)

    def _grace_pad_id(self) -> int:
        return pad_token_id(self.grace_tokenizer, self._grace_eos_ids)

    def _anchor_generation_kwargs(self, pad: int) -> dict:
        """The rollouts' generation settings (TRL's, with the user's ``generation_kwargs``) at the anchor
        temperature."""
        kwargs = dict(getattr(self, "generation_kwargs", None) or {})
        temperature = float(self.args.anchor_temperature)
        sample = temperature > 0
        kwargs.update(max_new_tokens=self.args.max_completion_length, do_sample=sample, num_return_sequences=1,
                      temperature=temperature if sample else None, pad_token_id=pad,
                      eos_token_id=self._grace_eos_ids, disable_compile=True)
        if not sample:  # greedy: sampling filters mean nothing, and transformers warns about them
            kwargs.update(top_p=None, top_k=None, min_p=None)
        return kwargs

    def _anchor_texts(self, inputs: list[dict], G: int) -> tuple[list[str], int]:
        texts, n_neg = [], 0
        for g in range(0, len(inputs), G):
            row = inputs[g]
            if self.args.mode == "supervised":
                negs = list(row.get("negatives") or [])[: self.args.num_negatives]
                n_neg = len(negs)
                texts.extend([row["query"], *negs])
            else:
                texts.append(row["text"])
        return texts, n_neg

    def _is_truncated(self, ids: Sequence[int]) -> bool:
        """No EOS at the end, whatever stopped it: the length limit, or vLLM's ``max_model_len`` (as TRL counts it)."""
        finished = set(self._grace_eos_ids)
        if self.grace_tokenizer.pad_token_id is not None:
            finished.add(int(self.grace_tokenizer.pad_token_id))
        return len(ids) == 0 or int(ids[-1]) not in finished

    def build_rollout_embeddings(self, inputs, prompts, completion_ids_list) -> RolloutEmbeddings:
        """Generate anchors, embed rollouts + anchors, gather over processes."""
        mode = "train" if self.model.training else "eval"
        G = self.num_generations if mode == "train" else self.num_generations_eval
        n_local = len(prompts)
        if n_local % G:
            raise RuntimeError(f"{n_local} local rollouts are not whole groups of {G}; GRACE needs "
                               "per_device batch × steps_per_generation to be a multiple of num_generations")
        enc_prompts = [self.prompt_encoder.encode_messages(p) for p in prompts]
        sequences, spans = [], []
        for enc, comp in zip(enc_prompts, completion_ids_list):
            comp = list(comp)
            sequences.append(enc.input_ids + comp)
            spans.append(pool_span(len(enc.input_ids), enc.content_start, len(comp), self.args.pooling))
        anchor_texts, n_neg = self._anchor_texts(inputs, G)
        anchor_enc = [self.prompt_encoder(t) for t in anchor_texts]
        anchor_prompt_ids = [e.input_ids for e in anchor_enc]

        anchor_completions = None
        fused, self._grace_fused_anchors = self._grace_fused_anchors, None
        if fused is not None and len(fused) == len(anchor_prompt_ids):
            anchor_completions = fused
        elif self.use_vllm:
            from .vllm_backend import generate_anchor_ids_vllm

            anchor_completions = generate_anchor_ids_vllm(self, anchor_prompt_ids, self.args.anchor_temperature,
                                                          self.args.max_completion_length)
        with unwrap_model_for_generation(
            self.model_wrapped,
            self.accelerator,
            gather_deepspeed3_params=self.args.ds3_gather_for_generation,
            generation_kwargs=getattr(self, "generation_kwargs", None),  # as TRL's rollouts pass them
            gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
        ) as unwrapped, torch.no_grad(), self._lora_merged(unwrapped):
            if anchor_completions is None:
                anchor_completions = self._generate_anchor_completions(unwrapped, anchor_prompt_ids)
            for enc, comp in zip(anchor_enc, anchor_completions):
                sequences.append(enc.input_ids + list(comp))
                spans.append(pool_span(len(enc.input_ids), enc.content_start, len(comp), self.args.pooling))
            vectors = self.compute_embeddings(unwrapped, sequences, spans)
        if vectors.shape[0] != len(sequences):
            raise RuntimeError(f"compute_embeddings returned {vectors.shape[0]} vectors for {len(sequences)} "
                               "sequences")
        device = self.accelerator.device
        vectors = vectors.to(device, torch.float32)
        policy_local = vectors[:n_local]
        anchors_local = vectors[n_local:].view(n_local // G, 1 + n_neg if self.args.mode == "supervised" else 1, -1)
        truncated = torch.tensor([self._is_truncated(c) for c in completion_ids_list], device=device)
        lengths = torch.tensor([len(c) for c in completion_ids_list], device=device)

        gather = self.accelerator.gather
        policy = gather(policy_local)
        anchors_all = gather(anchors_local.contiguous())
        if self.args.contrastive_weight > 0 and mode == "train":
            # Targets of the auxiliary InfoNCE term: every anchor of the generation batch (all processes), with
            # each local rollout's own query (or text) anchor as its positive. Each rollout's pooling span (the
            # reward's, counted from its first prompt token) travels with its row through TRL's shuffle and split.
            groups_local = n_local // G
            first = self.accelerator.process_index * groups_local
            group_ids = torch.arange(n_local, device=device) // G + first
            rollout_spans = torch.tensor(spans[:n_local], device=device)
            bank = torch.cat([anchors_all[:, 0], anchors_all[:, 1:].reshape(-1, anchors_all.shape[-1])], 0)
            self._grace_contrastive = (bank.detach(), group_ids, rollout_spans)
        self._last_anchor_texts = anchor_texts
        self._last_anchor_completions = anchor_completions
        proc = self.accelerator.process_index
        return RolloutEmbeddings(
            policy=policy,
            anchors=anchors_all[:, 0],
            negatives=anchors_all[:, 1:] if self.args.mode == "supervised" and n_neg > 0 else None,
            truncated=gather(truncated),
            completion_lengths=gather(lengths),
            num_generations=G,
            mode=self.args.mode,
            local=slice(proc * n_local, (proc + 1) * n_local),
        )

    # ----------------------------------------------------- fused anchor generation
    def _generate_and_score_completions(self, inputs):
        training = self.model.training
        self._grace_rows, self._grace_fused_anchors = inputs, None
        if training:  # an evaluation between two buffered training micro-batches keeps their InfoNCE targets
            self._grace_contrastive = None
        start = time.perf_counter()
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._grace_rows = None
        if training:
            timing = self._grace_timing
            timing["generation_and_scoring_seconds"] += time.perf_counter() - start
            timing["rollouts"] += int(output["completion_ids"].shape[0]) * self.accelerator.num_processes
            self._record_step_health(output)
            if self._grace_contrastive is not None:
                _, group_ids, spans = self._grace_contrastive
                output["grace_group"] = group_ids
                output["grace_span"] = spans
        return output

    def _can_fuse_anchors(self, images, multimodal_fields) -> bool:
        return (self.args.fuse_anchor_generation and self._grace_rows is not None
                and not self.use_vllm and not self.use_transformers_continuous_batching
                and not images and not multimodal_fields and not getattr(self, "tools", None))

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """One HF ``generate`` call for rollouts *and* anchors (anchors at ``anchor_temperature``).

        Decoding on CPU costs per step, not per row, so appending the anchor prompts to the rollout
        batch is nearly free, where a second decode doubled the generation time. Anchors are
        returned through ``self._grace_fused_anchors``; rollouts exactly as TRL returns them.
        """
        if not self._can_fuse_anchors(images, multimodal_fields):
            # TRL's HF generate would fill unset fields from the checkpoint's generation_config; the fused
            # path, the anchors and vLLM decode under the trainer's settings only
            policy = self.accelerator.unwrap_model(self.model)
            hf_generate = not self.use_vllm and not self.use_transformers_continuous_batching
            with ignoring_model_generation_config(policy), self._lora_merged(policy, hf_generate=hf_generate):
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                     has_tool_images)
        start = time.perf_counter()
        G = num_generations
        anchor_texts, _ = self._anchor_texts(self._grace_rows, G)
        anchor_ids = [self.prompt_encoder(t).input_ids for t in anchor_texts]
        all_ids = [list(p) for p in prompt_ids] + anchor_ids
        base_t = float(self.generation_config.temperature or 1.0)
        temps = [base_t] * len(prompt_ids) + [float(self.args.anchor_temperature)] * len(anchor_ids)
        with (
            unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped,
            torch.no_grad(),
            self._lora_merged(unwrapped),
        ):
            completions = generate_left_padded(
                unwrapped, all_ids, self._grace_pad_id(), self._grace_eos_ids, device=self.accelerator.device,
                generation_config=self.generation_config,
                logits_processor=LogitsProcessorList([RowTemperature(temps, base_t)]))
        self._grace_fused_anchors = completions[len(prompt_ids):]
        if self.model.training:
            self._grace_timing["generation_seconds"] += time.perf_counter() - start
        return completions[: len(prompt_ids)], None

    # ------------------------------------------------------- auxiliary InfoNCE
    def _compute_loss(self, model, inputs):
        weight = float(self.args.contrastive_weight)
        if (weight <= 0 or not self.model.training or "grace_group" not in inputs
                or self._grace_contrastive is None):
            return super()._compute_loss(model, inputs)
        captured = []

        def keep_hidden(module, args, output):
            captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

        handle = get_backbone(model).register_forward_hook(keep_hidden)
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            handle.remove()
        hidden = torch.cat(captured, 0)
        nce = self._contrastive_loss(hidden, inputs)
        normalizer = self.current_gradient_accumulation_steps
        self._metrics["train"]["grace/contrastive_loss"].append(self.accelerator.gather(nce.detach()).nanmean().item())
        if not torch.isfinite(nce):
            return loss
        return loss + weight * nce / normalizer

    def _contrastive_loss(self, hidden: torch.Tensor, inputs) -> torch.Tensor:
        """InfoNCE of the rows' pooled hidden states against the generation batch's anchors.

        Pools the reward's span (``pooling``). A row whose span holds tokens the loss forward did not attend
        to (a rollout that ``mask_truncated_completions`` masked out) cannot give the reward's vector and is
        left out, as it is out of the policy loss. A non-finite anchor is left out of every row's candidates,
        and a row whose vector or own anchor is not finite is left out, as the reward drops them; NaN when no
        row is left (every rank still gathers the metric).
        """
        prompt_mask, completion_mask = inputs["prompt_mask"], inputs["completion_mask"]
        width = prompt_mask.shape[1]
        first = width - prompt_mask.sum(1)  # left padding: the first real prompt token
        span = inputs["grace_span"].to(first.device)
        start, end = first + span[:, 0], first + span[:, 1]
        pos = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        mask = (pos >= start.unsqueeze(1).to(hidden.device)) & (pos < end.unsqueeze(1).to(hidden.device))
        attended = torch.cat([prompt_mask, completion_mask], 1).to(hidden.device).bool()
        pooled = masked_mean(hidden, mask)
        bank = self._grace_contrastive[0].to(pooled.device)
        targets = inputs["grace_group"].to(pooled.device)
        bank_ok = torch.isfinite(bank).all(-1)
        rows_ok = (torch.isfinite(pooled).all(-1) & bank_ok[targets]
                   & (mask & ~attended[:, : mask.shape[1]]).sum(1).eq(0))
        if not bool(rows_ok.any()):
            return torch.tensor(float("nan"), device=pooled.device)
        logits = pooled[rows_ok] @ torch.where(bank_ok.unsqueeze(1), bank, 0.0).T
        logits = (logits / float(self.args.contrastive_temperature)).masked_fill(~bank_ok, float("-inf"))
        return F.cross_entropy(logits, targets[rows_ok])

    # ------------------------------------------------------ embedding evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """TRL's evaluation (when an eval dataset is given) plus the embedding evaluator's dev scores.

        The evaluator runs once per call, also for a dict of eval datasets; its scores are logged in the same
        entry as TRL's metrics (the first dataset's) and reach ``on_evaluate``, so early stopping and
        ``metric_for_best_model`` see them.
        """
        if self.embedding_evaluator is None or self._grace_evaluating:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        scores = self.run_embedding_evaluator(metric_key_prefix)
        if eval_dataset is None and self.eval_dataset is None:
            # Trainer.log, not GRPOTrainer.log: in training mode the latter would take (and clear) the pending
            # training metrics into this evaluation entry
            super(GRPOTrainer, self).log(dict(scores))
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, scores)
            return scores
        self._grace_evaluating, self._grace_pending_scores = True, scores
        try:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._grace_evaluating, self._grace_pending_scores = False, None

    def evaluation_loop(self, *args, **kwargs):
        """Adds the embedding scores of the running :meth:`evaluate` to the first loop's metrics."""
        output = super().evaluation_loop(*args, **kwargs)
        scores, self._grace_pending_scores = self._grace_pending_scores, None
        if scores:
            output.metrics.update(scores)
        return output

    def run_embedding_evaluator(self, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Embed the evaluator's dev set with the current policy, exactly as :class:`GRACEEncoder` would.

        Runs on the main process inside the generation context (ZeRO-3 parameters gathered, adapters
        active) while the other processes wait; the scores (or its exception) are broadcast so every rank
        sees the same ``metric_for_best_model`` (or fails with it).
        """
        from .distributed import run_on_main_process
        from .encoder import GRACEEncoder

        start = time.perf_counter()
        first = not self._evaluation_runtimes()
        if self.accelerator.is_main_process:
            self._log_evaluation_start()
        with (
            quiet_trl_checkpointing(),
            unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped,
            torch.no_grad(),
            self._lora_merged(unwrapped, always=True),
        ):
            def evaluate_on_main():
                was_training = unwrapped.training
                try:
                    encoder = GRACEEncoder(unwrapped, self.grace_tokenizer, self.args.grace_settings(),
                                           name_or_path="policy", cache_dir=self._eval_cache_dir())
                    if first:  # no earlier evaluation to say how long this one takes: time its first rationales
                        encoder.on_rationales_generated = self._evaluation_estimate_logger(start)
                    return dict(self.embedding_evaluator(encoder))
                finally:
                    unwrapped.train(was_training)

            # an exception on the main process is raised on every rank, not left for them to wait on
            result = run_on_main_process(evaluate_on_main)
        name = getattr(self.embedding_evaluator, "name", "embedding")
        scores = {f"{metric_key_prefix}_{name}_{k}": float(v) for k, v in result.items()}
        scores[f"{metric_key_prefix}_{name}_runtime"] = round(time.perf_counter() - start, 2)
        self._grace_timing["evaluation_seconds"] += time.perf_counter() - start
        return scores

    def _eval_cache_dir(self) -> str | None:
        """The rationale cache while the policy is still the starting model (step 0), else None.

        Later policies never repeat, so caching their rationales would only fill the disk.
        """
        setting = self.args.embedding_eval_cache_dir
        if self.state.global_step != 0 or (setting or "").lower() == "none":
            return None
        if setting:
            return setting
        from .aliases import cache_dir

        return str(cache_dir() / "rationales")

    def _evaluation_runtimes(self) -> list[float]:
        name = getattr(self.embedding_evaluator, "name", "embedding")
        return [h[k] for h in self.state.log_history for k in h if k == f"eval_{name}_runtime"]

    def _log_evaluation_start(self) -> None:
        """Say what the (possibly minutes-long) dev-set evaluation does before it starts and how long the last took
        (the first evaluation logs an estimate once its first batch of rationales is done)."""
        about = self._evaluator_description()
        what = (f"{about['n']:,} {about['unit']} of {about['dataset']} ({about['split']} split)" if about
                else "the dev set")
        whose = "the untrained model" if self.state.global_step == 0 else f"the model at step {self.state.global_step}"
        last = self._evaluation_runtimes()
        took = (f"; the last evaluation took {last[-1]:.0f} s" if last
                else "; how long it takes follows after its first batch of rationales")
        logger.info("dev-set evaluation of %s: embedding %s, a rationale of up to %d tokens per text%s", whose, what,
                    self.args.max_completion_length, took)

    def _evaluation_estimate_logger(self, start: float):
        """A ``GRACEEncoder.on_rationales_generated`` that logs, once, how long the whole evaluation will take."""
        counter = getattr(self.embedding_evaluator, "rationale_texts", None)
        total_texts = counter() if callable(counter) else None
        logged = False

        def log_estimate(generated: int, to_generate: int, texts: int, seconds: float) -> None:
            nonlocal logged
            # texts of the evaluation's later encode calls (retrieval embeds its queries, then its documents),
            # counted as not cached
            later = max(0, total_texts - texts) if total_texts is not None else 0
            remaining = to_generate - generated + later
            if logged or remaining <= 0:
                return  # said already, or nothing left to estimate
            logged = True
            elapsed = time.perf_counter() - start
            total = projected_evaluation_seconds(elapsed, min(seconds, elapsed), generated, remaining)
            logger.info("dev-set evaluation: the first %d of %d rationales took %.0f s; the whole evaluation will "
                        "take about %s", generated, generated + remaining, seconds, format_seconds(total))

        return log_estimate

    # --------------------------------------------------------------- rewards
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        batch = self.build_rollout_embeddings(inputs, prompts, completion_ids_list)
        for row in inputs:
            row["grace_embeddings"] = batch
        try:
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        finally:
            for row in inputs:
                row.pop("grace_embeddings", None)
        self._write_samples(inputs, completions, rewards_per_func, batch)
        return rewards_per_func

    def _write_samples(self, inputs, completions, rewards_per_func, batch: RolloutEmbeddings) -> None:
        """Append a few rationales (rollouts and their anchors) to ``output_dir/rationale_samples.jsonl``."""
        k = self.args.num_sample_rationales
        if k <= 0 or not self.accelerator.is_main_process:
            return
        G = batch.num_generations
        # the reward GRPO trains on: the reward_weights-weighted sum, a function's None (NaN) left out
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func[batch.local] * weights.unsqueeze(0)).nansum(dim=1)
        records = []
        for i in range(0, min(len(inputs), k * G), G):
            comp = completions[i]
            text = comp[-1]["content"] if isinstance(comp, list) else comp
            record = {
                "step": int(self.state.global_step),
                "mode": "train" if self.model.training else "eval",  # an evaluation's rollouts at that step
                "text": inputs[i].get("positive", inputs[i].get("text")),
                "rationale": text,
                "reward": finite_or_none(rewards[i]),
                "truncated": bool(batch.truncated[batch.local][i]),
            }
            anchor_idx = (i // G) * (1 + (batch.negatives.shape[1] if batch.negatives is not None else 0))
            record["anchor_text"] = self._last_anchor_texts[anchor_idx]
            record["anchor_rationale"] = self.grace_tokenizer.decode(
                self._last_anchor_completions[anchor_idx], skip_special_tokens=True)
            records.append(record)
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, SAMPLES_FILE), "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n")

    # ----------------------------------------------------------- reliability
    @staticmethod
    def _check_context_fits(model, processing_class, args: GRACEConfig, datasets: dict) -> None:
        """Refuse texts whose prompt + ``max_completion_length`` exceeds the model's context, before it loads.

        Such a row does not fail: it runs out of memory or for hours, or the model silently reads past
        the positions it was trained on.
        """
        from transformers import AutoConfig, AutoTokenizer

        named = [(n, d) for n, d in datasets.items() if isinstance(d, Dataset)]
        named += [(f"{n}[{k}]", v) for n, d in datasets.items() if isinstance(d, dict)
                  for k, v in d.items() if isinstance(v, Dataset)]
        if not named:
            return
        model_config = AutoConfig.from_pretrained(model) if isinstance(model, str) else getattr(model, "config", None)
        context = context_length(model_config) if model_config is not None else None
        if context is None:
            return
        tokenizer = processing_class
        if tokenizer is None:
            source = model if isinstance(model, str) else getattr(model_config, "_name_or_path", None)
            if not source:
                return
            tokenizer = AutoTokenizer.from_pretrained(source)
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        encoder = PromptEncoder(tokenizer, args.system_prompt, args.instruction, args.chat_template_kwargs)
        overhead = len(encoder("x").input_ids)

        def count(texts):
            return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

        fields = ("query", "positive", "negatives") if args.mode == "supervised" else ("text",)
        for name, dataset in named:
            def rows(dataset=dataset):
                for field in (f for f in fields if f in dataset.column_names):
                    for i, value in enumerate(dataset[field]):
                        for j, text in enumerate(value if isinstance(value, list) else [value]):
                            yield i, field if not isinstance(value, list) else f"{field}[{j}]", text
            try:
                check_text_lengths(rows(), count, overhead, args.max_completion_length, context)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Train, refusing to mix runs: a fresh run needs an unused ``output_dir`` (or
        ``overwrite_output_dir``); a resumed one picks the newest *complete* checkpoint for
        ``True``/``"last"``, must keep what defines the embedding and the data, and drops the rationale
        samples of the steps it will redo. One run at a time holds ``output_dir`` (a lock).

        A checkpoint already at ``max_steps`` is loaded and not trained further (the recovery path after a
        kill during the final save), so the resumed run ends where the uninterrupted one did.
        """
        main = self.accelerator.is_main_process
        output_dir = self.args.output_dir
        lock = OutputDirLock(output_dir).acquire() if main else None
        try:
            check_fresh_output_dir(output_dir, SAMPLES_FILE, resume_from_checkpoint, self.args.overwrite_output_dir,
                                   remove=main)
            checkpoint = resolve_resume_checkpoint(output_dir, resume_from_checkpoint, clean=main)
            if checkpoint is not None:
                check_resumed_run(checkpoint, self.run_identity(), RUN_FILE)
            if checkpoint is not None and main:
                remove_orphaned_temp_files(output_dir)
                trim_samples(os.path.join(output_dir, SAMPLES_FILE), checkpoint_step(checkpoint))
            self.accelerator.wait_for_everyone()
            if checkpoint is not None and 0 < self.args.max_steps <= checkpoint_step(checkpoint):
                return self._load_finished_checkpoint(checkpoint)
            self._step_health = StepHealth()
            reference = self._reference_generation_check() if self.args.generation_check else None
            start = time.perf_counter()
            with quiet_trl_checkpointing():
                result = super().train(resume_from_checkpoint=checkpoint, trial=trial,
                                       ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
            self._write_timing(time.perf_counter() - start)
            self._log_why_training_stopped()
            if self.args.generation_check:
                self._final_generation_check(reference)
        finally:
            if lock is not None:
                lock.release()
        health = self._step_health
        if health.zero_advantage:
            logger.warning("%d generation batch(es) of this run learned nothing (%d with every rollout truncated); "
                           "see the warnings above", health.zero_advantage, health.all_truncated)
        return result

    def _generation_check_model(self):
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            raise ValueError("generation_check needs the whole model on one process; it does not run under ZeRO-3 "
                             "(run benchmarks/generation_report.py on the saved checkpoint instead)")
        return self.accelerator.unwrap_model(self.model)

    def _reference_generation_check(self) -> dict | None:
        """The starting model's generation check (main process), cached by the weights' content fingerprint."""
        model = self._generation_check_model()
        if not self.accelerator.is_main_process:
            return None
        from .evaluation.generation_check import reference_generation_check

        return reference_generation_check(model, self.grace_tokenizer)

    def _final_generation_check(self, reference: dict | None) -> None:
        model = self._generation_check_model()
        if self.accelerator.is_main_process:
            from .evaluation.generation_check import generation_check, generation_kept, summary_line

            result = generation_check(model, self.grace_tokenizer, reference=reference)
            result["kept"] = generation_kept(result)
            result["reference"] = {k: reference[k] for k in ("perplexity", "n_correct", "n_questions")}
            self.generation_check_result = result
            from .files import atomic_write

            os.makedirs(self.args.output_dir, exist_ok=True)
            with atomic_write(os.path.join(self.args.output_dir, "generation_check.json")) as f:
                json.dump(result, f, ensure_ascii=False, indent=1)
            logger.info("generation check: %s (%s)", summary_line("trained", result),
                        "kept" if result["kept"] else "NOT kept: see generation_check.json")
        self.accelerator.wait_for_everyone()

    def _write_timing(self, seconds: float) -> None:
        """``timing.json``: rollouts per minute and the share of the run spent generating, scoring, training
        and evaluating (HF generation with fused anchors; the split is not measured for vLLM)."""
        if not self.accelerator.is_main_process:
            return
        t = dict(self._grace_timing)
        gen, gen_score, ev = t["generation_seconds"], t["generation_and_scoring_seconds"], t["evaluation_seconds"]
        parts = {"generation": gen, "scoring": gen_score - gen, "evaluation": ev, "training": seconds - gen_score - ev}
        report = {
            # 0.01 s: a run of a few seconds rounded to 0.1 s would misstate its own rate by over 1%
            "run_seconds": round(seconds, 2), "rollouts": t["rollouts"],
            "rollouts_per_minute": round(60 * t["rollouts"] / seconds, 2) if seconds > 0 else None,
            "seconds": {k: round(v, 2) for k, v in parts.items()},
            # from the unrounded seconds, so the shares add up to 1 even for a run of a few seconds
            "share": {k: round(v / seconds, 3) for k, v in parts.items()} if seconds > 0 else {},
        }
        from .files import atomic_write

        os.makedirs(self.args.output_dir, exist_ok=True)
        with atomic_write(os.path.join(self.args.output_dir, "timing.json")) as f:
            json.dump(report, f, indent=1)
        logger.info("time: %s of %.0f s; %.1f rollouts per minute",
                    ", ".join(f"{k} {100 * v:.0f}%" for k, v in report["share"].items()), seconds,
                    report["rollouts_per_minute"] or 0)

    def _load_finished_checkpoint(self, checkpoint: str):
        """Weights and state of a checkpoint that already reached ``max_steps``; nothing is trained."""
        from transformers.trainer_callback import TrainerState
        from transformers.trainer_utils import TrainOutput

        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(f"{checkpoint} already reached max_steps={self.args.max_steps}; under DeepSpeed/FSDP "
                             f"export it with `grace-trl export --checkpoint {checkpoint}` instead of resuming")
        self._load_from_checkpoint(checkpoint)
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        logger.warning("resume: %s already reached max_steps=%d; loaded it without training further",
                       checkpoint, self.args.max_steps)
        losses = [h["train_loss"] for h in self.state.log_history if "train_loss" in h]
        return TrainOutput(self.state.global_step, losses[-1] if losses else float("nan"), {})

    def run_identity(self) -> dict:
        """What a resumed run must share with its checkpoint (embedding, model, data) and what it may change."""
        settings = self.args.grace_settings()
        embedding = {k: v for k, v in vars(settings).items() if k != "reward_variant"}
        config = getattr(self.model, "config", None)
        arch = {k: v for k, v in (config.to_dict() if config is not None else {}).items()
                if k not in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache")}
        model = {"architecture": hashlib.sha256(json.dumps(arch, sort_keys=True, default=str).encode()).hexdigest(),
                 "lora": self.uses_lora}
        optimisation = {}
        for key in OPTIMISATION_KEYS:
            value = getattr(self.args, key, None)
            optimisation[key] = getattr(value, "value", value)
        return {"embedding": embedding, "model": model, "data": self._data_fingerprint(),
                "model_name": getattr(config, "_name_or_path", None), "optimisation": optimisation}

    def _data_fingerprint(self) -> str | None:
        """A hash of the training rows' GRACE columns, in order (None for a dataset without a length)."""
        if getattr(self, "_grace_data_fingerprint", None) is None and isinstance(self.train_dataset, Dataset):
            fields = ("query", "positive", "negatives") if self.args.mode == "supervised" else ("text",)
            h = hashlib.sha256(str(len(self.train_dataset)).encode())
            for field in (f for f in fields if f in self.train_dataset.column_names):
                for batch in self.train_dataset.select_columns([field]).iter(batch_size=4096):
                    h.update(json.dumps(batch[field], ensure_ascii=False).encode("utf-8", "surrogatepass"))
            self._grace_data_fingerprint = h.hexdigest()
        return getattr(self, "_grace_data_fingerprint", None)

    def _log_why_training_stopped(self) -> None:
        state, args = self.state, self.args
        epoch = f"epoch {state.epoch:.2f}" if state.epoch is not None else "epoch ?"
        if state.global_step >= state.max_steps:
            reason = f"max_steps={args.max_steps} reached" if args.max_steps > 0 else \
                f"num_train_epochs={args.num_train_epochs:g} done"
        elif args.max_train_minutes:
            reason = f"the max_train_minutes={args.max_train_minutes:g} budget was reached"
        else:
            reason = "a callback stopped it"
        logger.info("training stopped at step %d of %d (%s): %s", state.global_step, state.max_steps, epoch, reason)

    def _record_step_health(self, output) -> None:
        """Warn about (and log) generation batches that cannot move the policy."""
        health = getattr(self, "_step_health", None)
        if health is None:
            health = self._step_health = StepHealth()
        ids, mask = output["completion_ids"], output["completion_mask"].bool()
        truncated = torch.tensor([self._is_truncated(row[m].tolist()) for row, m in zip(ids, mask)],
                                 dtype=torch.float32, device=ids.device)
        truncated = self.accelerator.gather(truncated)
        max_adv = self.accelerator.gather(output["advantages"].detach().abs().float().reshape(-1)).max()
        metrics = health.update(int(self.state.global_step), float(truncated.mean()), float(max_adv),
                                int(self.args.max_completion_length))
        for key, value in metrics.items():
            self._metrics["train"][key].append(value)

    # ---------------------------------------------------------------- saving
    @property
    def uses_lora(self) -> bool:
        """The policy is a peft-wrapped model: what is saved is an adapter."""
        return bool(getattr(self.model, "peft_config", None))

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None):
        """TRL's card, for an embedder: base model (an alias names its Hub original), GRACE, how to embed."""
        if not self.is_world_process_zero():
            return
        from trl.trainer.utils import get_comet_experiment_url, get_config_model_id, get_trackio_space_url

        from .aliases import base_weights_note, hub_base_model
        from .model_card import build_model_card

        source = get_config_model_id(self.model.config)
        base_model, license_ = hub_base_model(source)
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        # the pushed card loads the repo; a local card names the folder, never a path of this machine
        hub_model_id = getattr(self, "hub_model_id", None) or self.args.hub_model_id
        model_id = hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
        card = build_model_card(model_id, self.args.grace_settings(),
            model_name=model_name, base_model=base_model, license=license_,
            dataset_name=dataset_name, tags=[*self._tag_names, *tags], training=self._card_training_summary(),
            results=self._card_dev_results(), base_weights_note=base_weights_note(source),
            local_folder=hub_model_id is None, lora=self.uses_lora,
            trackio_url=get_trackio_space_url(), comet_url=get_comet_experiment_url())
        card.save(os.path.join(self.args.output_dir, "README.md"))

    def _card_training_summary(self) -> dict:
        args = self.args
        summary = {"global_step": self.state.global_step, "mode": args.mode, "num_generations": args.num_generations,
                   "learning_rate": args.learning_rate, "max_completion_length": args.max_completion_length,
                   "reward_variant": args.reward_variant, "lambda_consistency": args.lambda_consistency,
                   "lambda_cross": args.lambda_cross, "tau": args.tau}
        summary = {**summary, **self._card_dev_scores()}
        check = getattr(self, "generation_check_result", None)
        if check is not None:
            ref = check["reference"]
            summary["generation check (60 fixed questions, greedy)"] = (
                f"{check['n_correct']}/{check['n_questions']} right (starting model {ref['n_correct']}); "
                f"{len(check['regressions'])} of its {check['reference_correct']} right answers lost; perplexity "
                f"{check['perplexity']:.2f} vs {ref['perplexity']:.2f} ({100 * check['perplexity_change']:+.1f}%): "
                + ("generation kept" if check["kept"] else "generation NOT kept"))
        return summary

    def _dev_keys(self) -> tuple[list[dict], list[str]]:
        evals = [h for h in self.state.log_history if any(k.startswith("eval_") for k in h)]
        keys = [k for k in (evals[-1] if evals else {}) if re.fullmatch(r"eval_\w*(spearman|ndcg_at_\d+)", k)]
        return evals, keys

    def _evaluator_description(self) -> dict | None:
        describe = getattr(self.embedding_evaluator, "describe", None)
        return describe() if callable(describe) else None

    def _card_dev_scores(self) -> dict:
        """The embedding evaluator's main scores, first and last evaluation: the card says whether training helped,
        and on what (dataset, split, n)."""
        evals, keys = self._dev_keys()
        about = self._evaluator_description()
        on = f"; {about['dataset']}, {about['split']} split, n = {about['n']:,} {about['unit']}" if about else ""
        out = {}
        for key in keys:
            points = [(h["step"], h[key]) for h in evals if key in h]
            (s0, v0), (s1, v1) = points[0], points[-1]
            out[f"dev {key}"] = f"{v0:.2f} (step {s0})" + (f" → {v1:.2f} (step {s1})" if s1 != s0 else "") + on
        return out

    def _card_dev_results(self) -> list:
        """The last dev score of the evaluator's main metric as the card's model-index entry (mteb's 0-1 scale)."""
        from huggingface_hub import EvalResult

        evals, keys = self._dev_keys()
        about = self._evaluator_description()
        name = getattr(self.embedding_evaluator, "name", "embedding")
        main = [k for k in keys if about and k == f"eval_{name}_{about['metric'].removeprefix('cosine_')}"]
        if not main:
            return []
        value = [h[main[0]] for h in evals if main[0] in h][-1]
        return [EvalResult(task_type=about["task_type"], dataset_type=about["dataset"], dataset_name=about["dataset"],
                           dataset_split=about["split"], dataset_args={"n": about["n"]},
                           metric_type=about["metric"], metric_value=round(value / 100.0, 6))]

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save the checkpoint plus ``grace_config.json`` so an encoder embeds exactly as training did.

        sentence-transformers' files are written as well: ``grace_trl.load_sentence_transformer(path)`` then
        gives GRACE's no-rationale embedding. ``grace_save_complete.json`` is removed first and written last,
        so a save cut short is refused by every loader instead of loading with other settings.
        """
        folder = output_dir or self.args.output_dir
        if self.args.should_save and os.path.isdir(folder):
            remove_save_marker(folder)
        # peft's save_pretrained rewrites README.md's metadata (base_model: the local path the base model was read
        # from, library_name: peft); the card written for this run already names the Hub base model: keep it
        card_path = os.path.join(folder, "README.md")
        card = None
        if self.args.should_save and self.uses_lora and os.path.isfile(card_path):
            with open(card_path, encoding="utf-8") as f:
                card = f.read()
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            from .files import atomic_write
            from .st_module import SENTENCE_TRANSFORMERS_POOLING, write_sentence_transformers_files

            if card is not None:
                with atomic_write(card_path, mode="w", encoding="utf-8") as f:
                    f.write(card)
            settings = self.args.grace_settings()
            settings.save(folder)
            if settings.pooling in SENTENCE_TRANSFORMERS_POOLING:
                write_sentence_transformers_files(folder, settings)
            else:
                logger.info("pooling=%r has no sentence-transformers equivalent; the checkpoint is for GRACEEncoder "
                            "only", settings.pooling)
            with atomic_write(os.path.join(folder, RUN_FILE)) as f:
                json.dump(self.run_identity(), f, indent=2, default=str)
            write_save_marker(folder, int(self.state.global_step))


__all__ = ["GRACETrainer", "GRACEReward"]
