"""Pooling: one vector per (prompt + rationale) from the last hidden layer.

Sequences are right-padded, so with causal attention the hidden state of every real token is
identical to the unpadded forward; the mask then selects the span to average. Vectors are
L2-normalised so a dot product is a cosine.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

PoolingMethod = Literal["mean", "rationale", "last"]
POOLING_METHODS = ("mean", "rationale", "last")


def pool_span(prompt_len: int, content_start: int, completion_len: int, method: str) -> tuple[int, int]:
    """Token span [start, end) averaged for one sequence laid out as prompt ids + completion ids.

    mean: user content through the end of the rationale (EOS included when generated);
    rationale: generated tokens only (falls back to ``mean`` if nothing was generated);
    last: the final token.
    """
    end = prompt_len + completion_len
    if method == "mean":
        return content_start, end
    if method == "rationale":
        return (prompt_len, end) if completion_len > 0 else (content_start, end)
    if method == "last":
        return end - 1, end
    raise ValueError(f"pooling must be one of {POOLING_METHODS}, got {method!r}")


def span_mask(spans: Sequence[tuple[int, int]], length: int, device=None) -> torch.Tensor:
    """(N, length) float mask with ones inside each span."""
    pos = torch.arange(length, device=device).unsqueeze(0)
    starts = torch.tensor([s for s, _ in spans], device=device).unsqueeze(1)
    ends = torch.tensor([e for _, e in spans], device=device).unsqueeze(1)
    return ((pos >= starts) & (pos < ends)).float()


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Average ``hidden`` (N, T, d) over ``mask`` (N, T) in fp32, then L2-normalise."""
    mask = mask.to(hidden.device, torch.float32)
    summed = torch.einsum("ntd,nt->nd", hidden.float(), mask)
    pooled = summed / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    return F.normalize(pooled, dim=-1) if normalize else pooled


def get_backbone(model):
    """The transformer body (no LM head) of a causal LM, seen through PEFT/DeepSpeed wrappers.

    Calling the body rather than the LM avoids computing vocabulary logits and keeping every
    layer's hidden states, which would dominate memory for an embedding pass.
    """
    inner = getattr(model, "module", model)  # DDP / DeepSpeed engine
    if hasattr(inner, "get_base_model"):  # PEFT: LoRA layers live inside the base model's modules
        inner = inner.get_base_model()
    prefix = getattr(inner, "base_model_prefix", None)
    body = getattr(inner, prefix, None) if prefix else None
    return body if body is not None else inner


@torch.no_grad()
def embed_token_sequences(
    model,
    sequences: Sequence[Sequence[int]],
    spans: Sequence[tuple[int, int]],
    pad_token_id: int,
    batch_size: int = 16,
    normalize: bool = True,
) -> torch.Tensor:
    """Pooled, normalised vectors (N, d) for token sequences; dropout is off during the pass.

    Batches are formed from length-sorted sequences to keep padding small; the output keeps the
    input order.
    """
    if len(sequences) != len(spans):
        raise ValueError(f"got {len(sequences)} sequences but {len(spans)} pooling spans")
    if len(sequences) == 0:
        raise ValueError("no sequences to embed")
    body = get_backbone(model)
    device = next(body.parameters()).device
    was_training = body.training
    body.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out: list[torch.Tensor | None] = [None] * len(sequences)
    try:
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            length = max(len(sequences[i]) for i in idx)
            ids = torch.full((len(idx), length), pad_token_id, dtype=torch.long)
            attn = torch.zeros((len(idx), length), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
                attn[r, : len(sequences[i])] = 1
            hidden = body(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).last_hidden_state
            mask = span_mask([spans[i] for i in idx], length, device=hidden.device)
            vecs = masked_mean(hidden, mask, normalize=normalize)
            for r, i in enumerate(idx):
                out[i] = vecs[r]
    finally:
        if was_training:
            body.train()
    return torch.stack(out)  # type: ignore[arg-type]
