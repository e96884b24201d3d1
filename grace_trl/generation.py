"""Rationale generation: one generator interface, one left-pad → generate → cut-at-EOS, one EOS rule.

The trainer's anchors (and its fused rollout + anchor decode) and the encoder's Hugging Face
backend both call :func:`generate_left_padded`; the vLLM backend
(:class:`grace_trl.vllm_backend.VLLMRationaleGenerator`) implements the same
:class:`RationaleGenerator` interface as :class:`HFRationaleGenerator`.

``model.generate`` fills every field left unset (``None``) in the config it is given from the
model's own ``generation_config`` (a Qwen2.5-Instruct checkpoint brings ``repetition_penalty=1.05``,
``top_k=20`` ...). Rollouts, anchors and the encoder must decode under GRACE's rules only, the same
as vLLM given explicit sampling parameters, so generation runs with that config swapped for the
library defaults (:func:`ignoring_model_generation_config`).

torch and transformers are imported inside the functions: the constants here are read by modules
that must stay light (settings, the memory planner).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol, Sequence, runtime_checkable

# Rationale length in tokens (training's max_completion_length, the encoder's max_new_tokens) unless set.
DEFAULT_MAX_NEW_TOKENS = 256
# Rationale generators of GRACEEncoder: transformers' generate, or a vLLM engine (GPU; see docs/vllm.md).
BACKENDS = ("hf", "vllm")


@runtime_checkable
class RationaleGenerator(Protocol):
    """Generates completions for already-tokenised prompts.

    Returns, for each prompt, the generated token ids: up to and including the first EOS, or
    ``max_new_tokens`` ids when no EOS was produced (a truncated rationale). Output order
    equals input order. ``temperature=0`` is greedy decoding.
    """

    def generate(self, prompt_ids_list: list[list[int]], max_new_tokens: int,
                 temperature: float = 0.0) -> list[list[int]]:
        ...


def split_at_eos(ids: Sequence[int], eos_ids) -> tuple[list[int], bool]:
    """Cut generated ids after the first EOS (kept, as in the trainer); flag no-EOS as truncated."""
    out = []
    for t in ids:
        out.append(int(t))
        if int(t) in eos_ids:
            return out, False
    return out, True


def eos_token_ids(model, tokenizer) -> list[int]:
    """The ids that end a rationale, as TRL's GRPOTrainer resolves them: the model's generation_config EOS
    ids, with the tokenizer's EOS first when the config lacks it."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if eos is None else [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]
    if tokenizer.eos_token_id is not None and int(tokenizer.eos_token_id) not in ids:
        ids.insert(0, int(tokenizer.eos_token_id))
    if not ids:
        raise ValueError("neither the model's generation_config nor the tokenizer defines an EOS token")
    return list(dict.fromkeys(ids))


def pad_token_id(tokenizer, eos_ids: Sequence[int]) -> int:
    """The tokenizer's pad id, else the first EOS id (what GRACE pads prompts and pooled sequences with)."""
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else int(eos_ids[0])


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


@contextmanager
def lora_merged(model, enabled: bool = True) -> Iterator[bool]:
    """Decode through LoRA weights merged into the base layers, then restore the base weights bit for bit.

    An unmerged adapter runs its two small matmuls beside every linear layer at every decoded token
    (1.3x the decode time of the merged model on a 2-core CPU: ``benchmarks/results/decode.md``).
    ``merge_adapter``/``unmerge_adapter`` alone would leave rounding residue in the frozen weights after each
    cycle, so the weights are copied first and put back. Yields whether it merged: not for a model without an
    adapter, one already merged or with its adapters disabled, one whose base weights are not fp32, or when
    ``enabled`` is false. The caller must not use it on partitioned weights (DeepSpeed ZeRO-3, FSDP).
    """
    import torch

    layers = []
    if enabled and getattr(model, "peft_config", None) and hasattr(model, "merge_adapter"):
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    # merging into bf16/fp16 weights rounds much of the adapter's small update away: a different function
    if not layers or any(m.merged or m.disable_adapters or m.get_base_layer().weight.dtype != torch.float32
                         for m in layers):
        yield False
        return
    saved = []
    for m in layers:
        base = m.get_base_layer()
        for name in ("weight", "bias"):
            t = getattr(base, name, None)
            if isinstance(t, torch.Tensor):
                saved.append((t, t.detach().clone()))
    model.merge_adapter()
    try:
        yield True
    finally:
        model.unmerge_adapter()
        with torch.no_grad():
            for t, copy in saved:
                t.copy_(copy)


def generate_left_padded(model, prompt_ids: Sequence[Sequence[int]], pad_id: int, eos_ids: Sequence[int],
                         device=None, **generate_kwargs) -> list[list[int]]:
    """Left-pad the prompts, ``model.generate`` under GRACE's decoding rules only, cut each row after its first EOS.

    ``generate_kwargs`` (``generation_config``, ``logits_processor`` ...) go to ``generate`` unchanged; the
    caller decides sampling. Returns one list of generated ids per prompt, in input order.
    """
    import torch

    if not prompt_ids:
        return []
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        attn[i, width - len(p):] = 1
    if device is None:
        device = next(model.parameters()).device
    with ignoring_model_generation_config(model):
        out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), **generate_kwargs)
    return [split_at_eos(row, eos_ids)[0] for row in out[:, width:].tolist()]


class HFRationaleGenerator:
    """``model.generate`` over length-sorted, left-padded batches (the encoder's default backend)."""

    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 16, show_progress_bar: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_token_id = pad_token_id(tokenizer, self.eos_ids)

    def generate(self, prompt_ids_list: list[list[int]], max_new_tokens: int,
                 temperature: float = 0.0) -> list[list[int]]:
        import torch
        from tqdm.auto import tqdm
        from transformers import GenerationConfig

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        sample = temperature > 0
        # Plain decoding, as the vLLM backend's explicit sampling parameters: nothing from the checkpoint's
        # generation_config (repetition penalty, top-k ...) applies.
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=1.0 if sample else None,
            top_k=0 if sample else None,
            pad_token_id=self.pad_token_id,
            eos_token_id=list(self.eos_ids),
        )
        was_training = self.model.training
        self.model.eval()
        # Longest first: the slowest batch runs while memory is fresh, and padding stays small.
        order = sorted(range(len(prompt_ids_list)), key=lambda i: -len(prompt_ids_list[i]))
        out: list[list[int] | None] = [None] * len(prompt_ids_list)
        batches = [order[b : b + self.batch_size] for b in range(0, len(order), self.batch_size)]
        try:
            with torch.no_grad():
                for idx in tqdm(batches, desc="rationales", unit="batch", disable=not self.show_progress_bar):
                    generated = generate_left_padded(self.model, [prompt_ids_list[i] for i in idx], self.pad_token_id,
                                                     self.eos_ids, generation_config=config)
                    for i, ids in zip(idx, generated):
                        out[i] = ids
        finally:
            if was_training:
                self.model.train()
        return out  # type: ignore[return-value]
