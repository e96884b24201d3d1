"""GRACEEncoder: embed texts the way GRACE training scored them.

Each text becomes the training prompt (system prompt + optional instruction + text, chat
template), the model writes a rationale (greedy by default, so embeddings are deterministic),
and the last hidden layer over prompt + rationale is pooled with the trainer's own functions
(:func:`grace_trl.pooling.pool_span` and :func:`grace_trl.pooling.embed_token_sequences`).
Sharing those functions is what makes an encoder vector equal the vector the reward saw.

Generation is behind the :class:`~grace_trl.generation.RationaleGenerator` interface: the Hugging Face
backend (:class:`~grace_trl.generation.HFRationaleGenerator`, the trainer's own left-pad/generate/cut
function) is the default; ``backend="vllm"`` plugs in ``grace_trl.vllm_backend.VLLMRationaleGenerator``
for GPU users (pooling still runs the HF model, because vLLM does not expose hidden states).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .aliases import resolve_model_name
from .cache import CachedRationale, RationaleCache, make_key, model_fingerprint
from .checks import check_complete_save, context_length
from .generation import BACKENDS, HFRationaleGenerator, RationaleGenerator, eos_token_ids, split_at_eos
from .pooling import embed_token_sequences, pool_span
from .prompts import PromptEncoder
from .settings import GRACESettings

logger = logging.getLogger(__name__)

_UNSET = object()  # distinguishes "not given" from an explicit None (= no system prompt)


@dataclass(frozen=True)
class Rationale:
    """The rationale behind one embedding."""

    text: str
    token_ids: list[int]
    truncated: bool  # hit max_new_tokens without EOS
    cached: bool = False

    def __str__(self) -> str:
        return self.text


def _load_causal_lm(path: str, dtype, device):
    from transformers import AutoModelForCausalLM

    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        try:
            from peft import AutoPeftModelForCausalLM
        except ImportError as err:  # pragma: no cover - peft is a dependency
            raise ImportError(f"{path} holds a LoRA adapter; loading it needs `pip install peft`") from err
        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device)


def _hub_settings(repo_id: str) -> GRACESettings | None:
    """``grace_config.json`` of a Hub model (None when the repo has none); uses the local HF cache offline."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    from .settings import SETTINGS_FILE

    try:
        path = hf_hub_download(repo_id, SETTINGS_FILE)
    except (EntryNotFoundError, RepositoryNotFoundError, LocalEntryNotFoundError):
        # no settings file, or offline and not cached: in the latter case the weights fail to load the
        # same way right after, with a clearer message
        return None
    return GRACESettings.load(os.path.dirname(path))


def chunk_bounds(n: int, size: int, first: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of consecutive chunks of ``n`` items, ``size`` each; the first holds ``first`` when given."""
    bounds, start = [], 0
    if first and 0 < first < n:
        bounds.append((0, first))
        start = first
    while start < n:
        bounds.append((start, min(n, start + size)))
        start += size
    return bounds


def _check_max_new_tokens(value, default: int) -> int:
    """``None`` means the checkpoint's setting; 0 or a negative is an error, not the default."""
    if value is None:
        return int(default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1 (or None for the checkpoint's "
                         f"{default}), got {value!r}")
    return int(value)


def check_tokenizer_matches(model, tokenizer, name: str) -> None:
    """Refuse a tokenizer whose ids the model cannot read, or that cannot write the model's EOS.

    A mismatched pair loads and embeds without an error, but every text then maps to nearly the same vector.
    """
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:
        raise ValueError(f"{name}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only {rows}: "
                         "they do not belong together (a tokenizer from another model?)")
    config_eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    eos = [config_eos] if isinstance(config_eos, int) else list(config_eos or [])
    beyond = [e for e in eos if isinstance(e, int) and e >= len(tokenizer)]
    if beyond:
        raise ValueError(f"{name}: the model's EOS token id {beyond[0]} is outside the tokenizer's {len(tokenizer)} "
                         "tokens: the tokenizer belongs to another model")


def _warn_trained_without_settings(path: str) -> None:
    """A folder written by a Trainer but lacking ``grace_config.json`` would embed with defaults that may differ."""
    from .settings import SETTINGS_FILE

    if any(os.path.isfile(os.path.join(path, f)) for f in ("trainer_state.json", "training_args.bin")):
        defaults = GRACESettings()
        logger.warning("%s was saved by a training run but has no %s; embedding with the defaults (the paper's "
                       "system prompt, pooling=%s, max_new_tokens=%d). Pass settings=GRACESettings(...) if it was "
                       "trained with others", path, SETTINGS_FILE, defaults.pooling, defaults.max_new_tokens)


class GRACEEncoder:
    """Rationale-conditioned text encoder for GRACE checkpoints and plain causal LMs."""

    def __init__(
        self,
        model,
        tokenizer,
        settings: GRACESettings | None = None,
        name_or_path: str | None = None,
        generator: RationaleGenerator | None = None,
        cache_dir: str | os.PathLike | None = None,
        backend_name: str | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.settings = settings or GRACESettings()
        self.settings.validate(f"{name_or_path}/grace_config.json" if name_or_path else "settings")
        self.context_length = context_length(getattr(model, "config", None))
        if self.context_length is not None and self.settings.max_new_tokens >= self.context_length:
            raise ValueError(f"{name_or_path or 'settings'}: max_new_tokens={self.settings.max_new_tokens} leaves no "
                             f"room for a text in the model's context of {self.context_length} tokens")
        check_tokenizer_matches(model, tokenizer, name_or_path or "the model")
        self.name_or_path = name_or_path or getattr(getattr(model, "config", None), "_name_or_path", None) or "model"
        self.generator: RationaleGenerator = generator or HFRationaleGenerator(model, tokenizer)
        self.backend_name = backend_name or getattr(self.generator, "name", type(self.generator).__name__)
        self.cache = RationaleCache(cache_dir) if cache_dir is not None else None
        self._fingerprint: str | None = None
        self._prompt_encoders: dict = {}
        self.cache_flush_every = 64  # prompts generated between cache writes
        # called as (generated, to_generate, texts, seconds) after each chunk of rationales of an encode call:
        # rationales generated so far, rationales the call generates (cache hits and repeated texts excluded), texts
        # it got, seconds spent generating so far.
        # While it is set, the first chunk is one generation batch, so a caller can time it early (the trainer
        # projects the length of its first dev-set evaluation from it).
        self.on_rationales_generated = None
        # sentence-transformers-style named prompts; each replaces the GRACE instruction (see ``encode``)
        self.prompts: dict[str, str] = {}
        self.model.eval()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        device: str | None = None,
        backend: str = "hf",
        cache_dir: str | os.PathLike | None = None,
        dtype: str | torch.dtype | None = None,
        settings: GRACESettings | None = None,
        generation_batch_size: int = 16,
        backend_kwargs: dict | None = None,
    ) -> "GRACEEncoder":
        """Load a GRACE checkpoint (reads its ``grace_config.json``), a plain causal LM or an alias.

        ``cache_dir`` enables the on-disk rationale cache. ``backend="vllm"`` generates with vLLM
        (GPU); the HF model is still loaded for pooling.
        """
        from transformers import AutoTokenizer

        if os.path.isdir(os.path.expanduser(str(name_or_path))):
            check_complete_save(os.path.expanduser(str(name_or_path)))  # before "no config.json": say why
        path = resolve_model_name(name_or_path)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype is None:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if settings is None:
            settings = GRACESettings.load(path) if os.path.isdir(path) else _hub_settings(path)
            if settings is None and os.path.isdir(path):
                _warn_trained_without_settings(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = _load_causal_lm(path, dtype, device)
        if backend == "hf":
            generator = HFRationaleGenerator(model, tokenizer, batch_size=generation_batch_size)
        elif backend == "vllm":
            if importlib.util.find_spec("vllm") is None:
                raise ImportError("backend='vllm' needs the vllm package: pip install vllm on GPU, or "
                                  "scripts/setup_vllm_env.sh for the CPU build (see docs/vllm.md)")
            from .vllm_backend import VLLMRationaleGenerator

            # the HF copy used for pooling shares the GPU, so vLLM must not claim 90% of it
            kwargs = {"gpu_memory_utilization": 0.5, **(backend_kwargs or {})}
            generator = VLLMRationaleGenerator(path, **kwargs)
        else:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        return cls(model, tokenizer, settings, name_or_path=name_or_path, generator=generator,
                   cache_dir=cache_dir, backend_name=backend)

    # ------------------------------------------------------------------ helpers
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model, self.tokenizer)
        return self._fingerprint

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def prompt_encoder(self, system_prompt=_UNSET, instruction=_UNSET) -> PromptEncoder:
        sp = self.settings.system_prompt if system_prompt is _UNSET else system_prompt
        ins = self.settings.instruction if instruction is _UNSET else instruction
        key = (sp, ins)
        if key not in self._prompt_encoders:
            self._prompt_encoders[key] = PromptEncoder(self.tokenizer, system_prompt=sp, instruction=ins,
                                                       chat_template_kwargs=self.settings.chat_template_kwargs)
        return self._prompt_encoders[key]

    def _cache_key(self, prompt_ids: list[int], text: str, max_new_tokens: int, temperature: float, seed) -> str:
        return make_key(
            model=self.fingerprint,
            backend=self.backend_name,
            prompt_sha=hashlib.sha256(np.asarray(prompt_ids, dtype=np.int64).tobytes()).hexdigest(),
            text=text,
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            seed=seed,
        )

    def _cache_entry_problem(self, hit: CachedRationale, max_new_tokens: int) -> str | None:
        """Why a cached rationale cannot be what this model generated (None when it can).

        The entry's checksum only shows it was not cut or garbled; an entry edited by hand (with a recomputed
        checksum) or written by another tokenizer is caught by re-deriving its text and ending from its ids.
        """
        ids = hit.completion_ids
        if len(ids) > max_new_tokens:
            return f"{len(ids)} token ids for max_new_tokens={max_new_tokens}"
        if any(i < 0 or i >= len(self.tokenizer) for i in ids):
            return "token ids outside the tokenizer's vocabulary"
        if self.tokenizer.decode(ids, skip_special_tokens=True) != hit.text:
            return "its text is not the decoding of its token ids"
        _, truncated = split_at_eos(ids, eos_token_ids(self.model, self.tokenizer))
        if truncated != hit.truncated:
            return "its truncated flag does not match its token ids"
        return None

    def generate_rationales(
        self,
        texts: Sequence[str],
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        system_prompt=_UNSET,
        instruction=_UNSET,
        show_progress_bar: bool = True,
    ) -> list[Rationale]:
        """Rationales for ``texts`` (from the cache where possible)."""
        max_new_tokens = _check_max_new_tokens(max_new_tokens, self.settings.max_new_tokens)
        pe = self.prompt_encoder(system_prompt, instruction)
        prompts = [pe(t).input_ids for t in texts]
        # Sampling without a seed is not reproducible, so it is neither read from nor written to the cache.
        use_cache = self.cache is not None and (temperature == 0 or seed is not None)
        keys = ([self._cache_key(p, t, max_new_tokens, temperature, seed) for p, t in zip(prompts, texts)]
                if use_cache else [])
        results: list[Rationale | None] = [None] * len(texts)
        todo: list[int] = []
        if use_cache:
            for i, key in enumerate(keys):
                hit = self.cache.get(key)
                problem = None if hit is None else self._cache_entry_problem(hit, max_new_tokens)
                if problem is not None:
                    self.cache.discard(key, problem)
                    hit = None
                if hit is None:
                    todo.append(i)
                else:
                    results[i] = Rationale(hit.text, hit.completion_ids, hit.truncated, cached=True)
        else:
            todo = list(range(len(texts)))
        # Identical texts share one generation.
        unique: dict[tuple, int] = {}
        for i in todo:
            unique.setdefault(tuple(prompts[i]), i)
        if unique:
            if temperature > 0 and seed is not None:
                torch.manual_seed(seed)
            eos = eos_token_ids(self.model, self.tokenizer)
            # Longest prompts first, generated in chunks whose results are cached as soon as they
            # exist: an interrupted run keeps everything finished so far.
            reps = sorted(unique.values(), key=lambda i: -len(prompts[i]))
            chunk = max(1, int(self.cache_flush_every)) if use_cache else len(reps)
            progress = self.on_rationales_generated
            first = getattr(self.generator, "batch_size", None) if progress is not None else None
            bounds = chunk_bounds(len(reps), chunk, first)
            # Several chunks share one bar over all texts, instead of a new bar per chunk.
            if hasattr(self.generator, "show_progress_bar"):
                self.generator.show_progress_bar = show_progress_bar and len(bounds) == 1
            bar = tqdm(total=len(reps), desc="rationales", unit="text",
                       disable=not show_progress_bar or len(bounds) == 1)
            by_prompt = {}
            seconds = 0.0
            for start, end in bounds:
                part = reps[start:end]
                began = time.perf_counter()
                generated = self.generator.generate([prompts[i] for i in part], max_new_tokens, temperature)
                seconds += time.perf_counter() - began
                if len(generated) != len(part):
                    raise RuntimeError(f"generator returned {len(generated)} completions for {len(part)} prompts")
                for i, ids in zip(part, generated):
                    ids, truncated = split_at_eos(ids, eos)
                    text = self.tokenizer.decode(ids, skip_special_tokens=True)
                    by_prompt[tuple(prompts[i])] = (ids, text, truncated)
                    if use_cache:
                        self.cache.put(keys[i], CachedRationale(ids, text, truncated),
                                       meta={"model": str(self.name_or_path), "max_new_tokens": max_new_tokens})
                bar.update(end - start)
                if progress is not None:
                    progress(end, len(reps), len(texts), seconds)
            bar.close()
            for i in todo:
                ids, text, truncated = by_prompt[tuple(prompts[i])]
                results[i] = Rationale(text, ids, truncated)
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ encoding
    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 16,
        max_new_tokens: int | None = None,
        use_rationale: bool = True,
        return_rationales: bool = False,
        show_progress_bar: bool = True,
        normalize: bool = True,
        convert_to_numpy: bool = True,
        temperature: float = 0.0,
        seed: int | None = None,
        system_prompt=_UNSET,
        instruction=_UNSET,
        prompt: str | None = None,
        prompt_name: str | None = None,
        normalize_embeddings: bool | None = None,
        convert_to_tensor: bool = False,
    ):
        """L2-normalised embeddings (N, d), optionally with the rationale of each text.

        ``use_rationale=False`` pools the prompt's content span only (no generation): the
        "without rationale" baseline. ``system_prompt``/``instruction`` override the checkpoint's
        settings (pass ``None`` to drop them).

        sentence-transformers' argument names work too, so code written for a ``SentenceTransformer``
        runs unchanged: ``prompt`` (or ``prompt_name``, looked up in ``self.prompts``) is the
        instruction, ``normalize_embeddings`` is ``normalize``, ``convert_to_tensor`` returns a tensor.
        """
        if prompt_name is not None:
            if prompt is not None:
                raise ValueError("pass either prompt or prompt_name, not both")
            if prompt_name not in self.prompts:
                raise ValueError(f"prompt_name {prompt_name!r} is not in encoder.prompts "
                                 f"(known: {sorted(self.prompts) or 'none'})")
            prompt = self.prompts[prompt_name]
        if prompt is not None:
            if instruction is not _UNSET:
                raise ValueError("pass either prompt or instruction, not both: the prompt is the instruction")
            instruction = prompt or self.settings.instruction  # "" keeps the checkpoint's, as sentence-transformers
        if normalize_embeddings is not None:
            normalize = normalize_embeddings
        if convert_to_tensor:
            convert_to_numpy = False
        single = isinstance(texts, str)
        if not single and (texts is None or not hasattr(texts, "__iter__") or isinstance(texts, (bytes, dict))):
            raise TypeError(f"encode() texts must be a str or a sequence of str, got {type(texts).__name__}")
        texts = [texts] if single else list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
            if not t.strip():
                # the prompt would have no content span to pool, and the chat template may drop it
                raise ValueError(f"texts[{i}] is empty; GRACE embeds a text through its content, so pass "
                                 "non-empty strings")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(f"texts[{i}]: invalid Unicode at character {err.start} ({t[err.start]!r} is a lone "
                                 "surrogate)") from None
        if not texts:
            raise ValueError("encode() got no texts")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"encode() batch_size must be an integer >= 1, got {batch_size!r}")
        _check_max_new_tokens(max_new_tokens, self.settings.max_new_tokens)
        if isinstance(self.generator, HFRationaleGenerator):
            self.generator.batch_size = batch_size
        pe = self.prompt_encoder(system_prompt, instruction)
        prompts = [pe(t) for t in texts]
        self._check_context(prompts, _check_max_new_tokens(max_new_tokens, self.settings.max_new_tokens)
                            if use_rationale else 0)
        if use_rationale:
            rationales = self.generate_rationales(texts, max_new_tokens, temperature, seed, system_prompt,
                                                  instruction, show_progress_bar)
        else:
            rationales = [Rationale("", [], False) for _ in texts]
        sequences, spans = [], []
        for p, r in zip(prompts, rationales):
            sequences.append(list(p.input_ids) + list(r.token_ids))
            spans.append(pool_span(len(p.input_ids), p.content_start, len(r.token_ids), self.settings.pooling))
        vectors = self._embed(sequences, spans, batch_size, normalize, show_progress_bar)
        out = vectors.cpu().numpy() if convert_to_numpy else vectors
        if single:
            out = out[0]
            rationales = rationales[0]
        return (out, rationales) if return_rationales else out

    def _check_context(self, prompts, max_new_tokens: int) -> None:
        """Refuse texts whose prompt plus rationale exceeds the model's context, as training does, before any work."""
        if self.context_length is None:
            return
        budget = self.context_length - max_new_tokens
        too_long = [(i, len(p.input_ids)) for i, p in enumerate(prompts) if len(p.input_ids) > budget]
        if too_long:
            shown = "; ".join(f"texts[{i}]: {n} tokens" for i, n in too_long[:10])
            raise ValueError(f"{len(too_long)} text(s) do not fit the model's context of {self.context_length} tokens "
                             f"with max_new_tokens={max_new_tokens} (at most {budget} prompt tokens): {shown}. "
                             "Shorten them or lower max_new_tokens")

    def encode_query(self, texts: str | Sequence[str], **kwargs):
        """``encode`` with the ``"query"`` prompt when ``self.prompts`` has one (GRACE shares one prompt)."""
        if "query" in self.prompts and "prompt" not in kwargs:
            kwargs.setdefault("prompt_name", "query")
        return self.encode(texts, **kwargs)

    def encode_document(self, texts: str | Sequence[str], **kwargs):
        """``encode`` with the ``"document"`` prompt when ``self.prompts`` has one."""
        if "document" in self.prompts and "prompt" not in kwargs:
            kwargs.setdefault("prompt_name", "document")
        return self.encode(texts, **kwargs)

    def _embed(self, sequences, spans, batch_size, normalize, show_progress_bar) -> torch.Tensor:
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        chunk = batch_size * 8
        out = torch.empty((len(sequences), self.embedding_dim), dtype=torch.float32)
        chunks = [order[c : c + chunk] for c in range(0, len(order), chunk)]
        for idx in tqdm(chunks, desc="embedding", unit="chunk", disable=not show_progress_bar or len(chunks) < 2):
            vecs = embed_token_sequences(self.model, [sequences[i] for i in idx], [spans[i] for i in idx],
                                         self.tokenizer.pad_token_id, batch_size=batch_size, normalize=normalize)
            out[torch.tensor(idx)] = vecs.float().cpu()
        return out

    @staticmethod
    def similarity(a, b) -> np.ndarray:
        """Cosine similarity matrix of two sets of (normalised) embeddings."""
        a = np.asarray(a, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32)
        a = a / np.clip(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12, None)
        b = b / np.clip(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12, None)
        return a @ b.T
