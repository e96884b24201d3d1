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
DEFAULT_POOLING = "mean"


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


def shared_prefix_length(sequences: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]) -> int:
    """Tokens at the start that every sequence shares and no pooling span covers.

    With one system prompt for all texts, this is the templated system turn plus the user header:
    its hidden states are identical for every sequence, so they are computed once and reused.
    """
    limit = min(min(start for start, _ in spans), min(len(seq) for seq in sequences) - 1)
    first = sequences[0]
    n = 0
    while n < limit and all(seq[n] == first[n] for seq in sequences):
        n += 1
    return n


def _cache_kwarg(body) -> str | None:
    """Name of the forward argument that takes a KV cache (transformers renamed it), or None."""
    import inspect

    try:
        params = inspect.signature(body.forward).parameters
    except (TypeError, ValueError):
        return None
    if "use_cache" not in params:
        return None
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def _prefix_cache(body, prefix: Sequence[int], batch: int, device, cache_kwarg: str):
    """KV cache of ``prefix`` computed once and repeated for ``batch`` rows (None if unsupported)."""
    out = body(input_ids=torch.tensor([list(prefix)], dtype=torch.long, device=device), use_cache=True)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(batch)
    return cache


@torch.no_grad()
def embed_token_sequences(
    model,
    sequences: Sequence[Sequence[int]],
    spans: Sequence[tuple[int, int]],
    pad_token_id: int,
    batch_size: int = 16,
    normalize: bool = True,
    share_prefix: bool = True,
    min_shared_prefix: int = 8,
) -> torch.Tensor:
    """Pooled, normalised vectors (N, d) for token sequences; dropout is off during the pass.

    Batches are formed from length-sorted sequences to keep padding small; the output keeps the
    input order. With ``share_prefix`` a leading run of at least ``min_shared_prefix`` tokens common
    to all sequences and outside every pooling span (the system prompt) is run once per batch and its
    KV cache reused: the same vectors (causal attention) for fewer tokens. Each batch then makes two
    forward calls instead of one.
    """
    if len(sequences) != len(spans):
        raise ValueError(f"got {len(sequences)} sequences but {len(spans)} pooling spans")
    if len(sequences) == 0:
        raise ValueError("no sequences to embed")
    for i, (seq, (start, end)) in enumerate(zip(sequences, spans)):
        if not 0 <= start < end <= len(seq):
            raise ValueError(f"sequence {i}: pooling span [{start}, {end}) is empty or outside its {len(seq)} tokens")
    body = get_backbone(model)
    device = next(body.parameters()).device
    cache_kwarg = _cache_kwarg(body) if share_prefix else None
    prefix_len = shared_prefix_length(sequences, spans) if cache_kwarg else 0
    if prefix_len < min_shared_prefix:
        prefix_len = 0
    prefix = list(sequences[0][:prefix_len])
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
            cache = _prefix_cache(body, prefix, len(idx), device, cache_kwarg) if prefix_len else None
            if cache is not None:
                # the mask spans prefix + rest; positions continue after the cached prefix
                hidden = body(input_ids=ids[:, prefix_len:].to(device), attention_mask=attn.to(device),
                              use_cache=True, **{cache_kwarg: cache}).last_hidden_state
                offset = prefix_len
            else:
                hidden = body(input_ids=ids.to(device), attention_mask=attn.to(device),
                              use_cache=False).last_hidden_state
                offset = 0
            mask = span_mask([(spans[i][0] - offset, spans[i][1] - offset) for i in idx], length - offset,
                             device=hidden.device)
            vecs = masked_mean(hidden, mask, normalize=normalize)
            for r, i in enumerate(idx):
                out[i] = vecs[r]
    finally:
        if was_training:
            body.train()
    return torch.stack(out)  # type: ignore[arg-type]
