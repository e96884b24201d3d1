"""GRACETrainer: GRPO whose reward is the contrastive quality of the policy's own rationales.

Each row's trained prompt is the positive document (supervised) or the text (unsupervised); TRL
samples G rollouts of it. Before the rewards are computed, the trainer generates one untrained
anchor rationale per group (query and negatives, or the text again) at ``anchor_temperature``,
embeds rollouts and anchors with the current policy (:meth:`GRACETrainer.compute_embeddings`), and
hands the gathered vectors to the reward functions as the ``grace_embeddings`` keyword. Anchors
never enter the loss batch, so they get no advantage and no gradient.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import nullcontext
from typing import Sequence

import torch
from datasets import Dataset
from transformers import GenerationConfig
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation

from .config import GRACEConfig
from .data import add_prompts, validate_dataset
from .model_card import PAPER
from .models import resolve_model_name
from .pooling import embed_token_sequences, pool_span
from .prompts import PromptEncoder
from .rewards import GRACEReward, RolloutEmbeddings, build_reward_funcs

logger = logging.getLogger(__name__)
SAMPLES_FILE = "rationale_samples.jsonl"


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
                 eval_dataset=None, processing_class=None, **kwargs):
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
        build_ctx = nullcontext()
        if args.use_vllm and args.vllm_mode == "colocate":
            # On CPU, vLLM repacks linear weights after loading and TRL's weight sync cannot reach them;
            # the patch keeps the engine computing from live weights (no-op on GPU).
            from .vllm_backend import cpu_weight_sync_patch

            build_ctx = cpu_weight_sync_patch()
        with build_ctx:
            super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                             eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        if self.is_deepspeed_enabled and not args.ds3_gather_for_generation:
            ds_stage = self.accelerator.state.deepspeed_plugin.zero_stage
            if ds_stage == 3:
                raise ValueError("GRACE embeds rollouts inside the generation context; with ZeRO-3 keep "
                                 "ds3_gather_for_generation=True")
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        self.grace_tokenizer = tokenizer
        self.prompt_encoder = PromptEncoder(tokenizer, args.system_prompt, args.instruction,
                                            self.args.chat_template_kwargs)
        self._grace_eos_ids = self._eos_ids(tokenizer)

    # ------------------------------------------------------------------ data
    @staticmethod
    def _prepare_dataset(dataset, args: GRACEConfig, name: str):
        if dataset is None:
            raise ValueError(f"{name} is required")
        if isinstance(dataset, dict):
            return {k: GRACETrainer._prepare_dataset(v, args, f"{name}[{k}]") for k, v in dataset.items()}
        if isinstance(dataset, Dataset):
            validate_dataset(dataset, args.mode, args.num_negatives)
            if "prompt" not in dataset.column_names:
                dataset = add_prompts(dataset, args.mode, args.system_prompt, args.instruction)
        return dataset

    def _eos_ids(self, tokenizer) -> list[int]:
        ids = getattr(self, "eos_token_ids", None)  # set by GRPOTrainer from the generation config
        if not ids:
            ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]

    # ------------------------------------------------------------- embedding
    def compute_embeddings(self, model, sequences: Sequence[Sequence[int]],
                           spans: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Pooled, L2-normalised vectors (N, d) for token sequences; override to change pooling.

        Called on every process with the same number of sequences, inside the generation context
        (ZeRO-3 parameters gathered, PEFT adapters active), under ``torch.no_grad``. Must return
        pooled vectors only.
        """
        pad = self.grace_tokenizer.pad_token_id
        if pad is None:
            pad = self._grace_eos_ids[0]
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
        pad = self.grace_tokenizer.pad_token_id if self.grace_tokenizer.pad_token_id is not None else self._grace_eos_ids[0]
        width = max(len(p) for p in prompt_ids)
        ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompt_ids):
            ids[i, width - len(p):] = torch.tensor(p)
            attn[i, width - len(p):] = 1
        temperature = float(self.args.anchor_temperature)
        config = GenerationConfig(
            max_new_tokens=self.args.max_completion_length,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_p=self.args.top_p if temperature > 0 else None,
            top_k=self.args.top_k if temperature > 0 else None,
            pad_token_id=pad,
            eos_token_id=self._grace_eos_ids,
        )
        device = self.accelerator.device
        out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), generation_config=config)
        completions = []
        for row in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in self._grace_eos_ids), None)
            completions.append(row if cut is None else row[: cut + 1])
        return completions

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
        return len(ids) == 0 or (ids[-1] not in self._grace_eos_ids and len(ids) >= self.args.max_completion_length)

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
        if self.use_vllm:
            from .vllm_backend import generate_anchor_ids_vllm

            anchor_completions = generate_anchor_ids_vllm(self, anchor_prompt_ids, self.args.anchor_temperature,
                                                          self.args.max_completion_length)
        with unwrap_model_for_generation(
            self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation
        ) as unwrapped, torch.no_grad():
            if anchor_completions is None:
                anchor_completions = self._generate_anchor_completions(unwrapped, anchor_prompt_ids)
            for enc, comp in zip(anchor_enc, anchor_completions):
                sequences.append(enc.input_ids + list(comp))
                spans.append(pool_span(len(enc.input_ids), enc.content_start, len(comp), self.args.pooling))
            vectors = self.compute_embeddings(unwrapped, sequences, spans)
        if vectors.shape[0] != len(sequences):
            raise RuntimeError(f"compute_embeddings returned {vectors.shape[0]} vectors for {len(sequences)} sequences")
        device = self.accelerator.device
        vectors = vectors.to(device, torch.float32)
        policy_local = vectors[:n_local]
        anchors_local = vectors[n_local:].view(n_local // G, 1 + n_neg if self.args.mode == "supervised" else 1, -1)
        truncated = torch.tensor([self._is_truncated(c) for c in completion_ids_list], device=device)
        lengths = torch.tensor([len(c) for c in completion_ids_list], device=device)

        gather = self.accelerator.gather
        policy = gather(policy_local)
        anchors_all = gather(anchors_local.contiguous())
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
        records = []
        for i in range(0, min(len(inputs), k * G), G):
            comp = completions[i]
            text = comp[-1]["content"] if isinstance(comp, list) else comp
            record = {
                "step": int(self.state.global_step),
                "text": inputs[i].get("positive", inputs[i].get("text")),
                "rationale": text,
                "reward": float(rewards_per_func[batch.local][i].sum()),
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
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    # ---------------------------------------------------------------- saving
    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None):
        """TRL's card, for an embedder: base model (an alias names its Hub original), GRACE, how to embed."""
        if not self.is_world_process_zero():
            return
        from trl.trainer.utils import get_comet_experiment_url, get_config_model_id, get_trackio_space_url

        from .model_card import build_model_card
        from .models import hub_base_model

        base_model, license_ = hub_base_model(get_config_model_id(self.model.config))
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        hub_model_id = getattr(self, "hub_model_id", None)
        card = build_model_card(hub_model_id or self.args.output_dir, self.args.grace_settings(),
            model_name=model_name, base_model=base_model, license=license_,
            dataset_name=dataset_name, tags=[*self._tag_names, *tags], training=self._card_training_summary(),
            trackio_url=get_trackio_space_url(), comet_url=get_comet_experiment_url())
        card.save(os.path.join(self.args.output_dir, "README.md"))

    def _card_training_summary(self) -> dict:
        args = self.args
        return {"global_step": self.state.global_step, "mode": args.mode, "num_generations": args.num_generations,
                "learning_rate": args.learning_rate, "max_completion_length": args.max_completion_length,
                "reward_variant": args.reward_variant, "lambda_consistency": args.lambda_consistency,
                "lambda_cross": args.lambda_cross, "tau": args.tau}

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save the checkpoint plus ``grace_config.json`` so an encoder embeds exactly as training did.

        sentence-transformers' files are written as well: ``SentenceTransformer(path, trust_remote_code=True)``
        then gives GRACE's no-rationale embedding.
        """
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            from .st_module import write_sentence_transformers_files

            settings = self.args.grace_settings()
            settings.save(output_dir or self.args.output_dir)
            write_sentence_transformers_files(output_dir or self.args.output_dir, settings)


__all__ = ["GRACETrainer", "GRACEReward"]
