"""mteb 2.x encoder protocol around :class:`~grace_trl.encoder.GRACEEncoder`.

``mteb.evaluate(GRACEMTEBEncoder(encoder), mteb.get_tasks([...]))`` runs official tasks where
the Hub is reachable; the local tasks in :mod:`grace_trl.evaluation.tasks` run offline. The
encoding settings that change scores (rationale on/off, max_new_tokens, any reduced-run limit)
go into ``ModelMeta.experiment_kwargs``, which mteb uses to keep such runs in separate result
folders.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction

from ..aliases import MODEL_ALIASES
from ..encoder import _UNSET, GRACEEncoder


def _mteb_name(label: str) -> str:
    """mteb wants 'organization/model'; Hub ids pass through, paths and aliases get a prefix."""
    if re.fullmatch(r"[\w.-]+/[\w.-]+", label) and not os.path.exists(label):
        return label
    base = os.path.basename(os.path.normpath(label)) or label
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in base).strip("-") or "model"
    return f"grace-trl/{safe}"


class GRACEMTEBEncoder(AbsEncoder):
    """Implements mteb's ``EncoderProtocol`` (``encode`` over a DataLoader + ``mteb_model_meta``)."""

    def __init__(
        self,
        encoder: GRACEEncoder,
        use_rationale: bool = True,
        max_new_tokens: int | None = None,
        name: str | None = None,
        use_task_instructions: bool = False,
        experiment_kwargs: dict[str, Any] | None = None,
        show_progress_bar: bool = True,
        system_prompt=_UNSET,
    ):
        """``system_prompt`` replaces the checkpoint's for every text this wrapper embeds (``None``: no system
        message); the encoder and its settings stay as they are."""
        self.encoder = encoder
        self.system_prompt = system_prompt
        self.model = encoder  # AbsEncoder convention
        self.use_rationale = use_rationale
        self.max_new_tokens = int(max_new_tokens or encoder.settings.max_new_tokens)
        self.use_task_instructions = use_task_instructions
        self.show_progress_bar = show_progress_bar
        kwargs = {"rationale": use_rationale}
        if use_rationale:
            kwargs["max_new_tokens"] = self.max_new_tokens
        if use_task_instructions:
            kwargs["task_instructions"] = True
        kwargs.update(experiment_kwargs or {})
        n_params = sum(p.numel() for p in encoder.model.parameters())
        self.mteb_model_meta = ModelMeta(
            loader=None,
            name=_mteb_name(name or str(encoder.name_or_path)),
            revision=encoder.fingerprint[:12],
            release_date=None,
            languages=None,
            n_parameters=int(n_params),
            memory_usage_mb=None,
            max_tokens=float(getattr(encoder.model.config, "max_position_embeddings", 0) or 0) or None,
            embed_dim=encoder.embedding_dim,
            license=None,
            open_weights=True,
            public_training_code=None,
            public_training_data=None,
            framework=["PyTorch"],
            similarity_fn_name=ScoringFunction.COSINE,
            use_instructions=use_task_instructions,
            training_datasets=None,
            experiment_kwargs=kwargs,
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str, use_rationale: bool = True, max_new_tokens: int | None = None,
                        name: str | None = None, **encoder_kwargs) -> "GRACEMTEBEncoder":
        encoder = GRACEEncoder.from_pretrained(name_or_path, **encoder_kwargs)
        return cls(encoder, use_rationale=use_rationale, max_new_tokens=max_new_tokens, name=name or name_or_path)

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None,
               **kwargs) -> np.ndarray:
        texts: list[str] = []
        for batch in inputs:
            if "text" not in batch:
                raise ValueError(f"mteb batch has no 'text' column (columns: {sorted(batch)})")
            texts.extend(batch["text"])
        instruction = {} if self.system_prompt is _UNSET else {"system_prompt": self.system_prompt}
        if self.use_task_instructions:
            task_instruction = self.get_instruction(task_metadata, prompt_type)
            if task_instruction:
                instruction["instruction"] = task_instruction
        return self.encoder.encode(
            texts,
            batch_size=int(kwargs.get("batch_size") or 16),
            max_new_tokens=self.max_new_tokens,
            use_rationale=self.use_rationale,
            show_progress_bar=bool(kwargs.get("show_progress_bar", self.show_progress_bar)),
            convert_to_numpy=True,
            **instruction,
        )


def _weights_digest(folder: str) -> str:
    """Content hash of a local checkpoint's weights and GRACE settings: mteb's revision for a folder.

    Two checkpoints of one run share names and sizes, so only the bytes tell them apart.
    """
    import hashlib

    digest = hashlib.sha256()
    names = sorted(n for n in os.listdir(folder)
                   if n.endswith((".safetensors", ".bin")) or n in ("grace_config.json", "config.json"))
    if not names:
        raise FileNotFoundError(f"{folder} holds no model weights (*.safetensors / *.bin)")
    for name in names:
        digest.update(name.encode())
        with open(os.path.join(folder, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def _local_model_facts(folder: str) -> dict:
    """``n_parameters``, ``embed_dim`` and ``max_tokens`` of a local checkpoint, read from ``config.json`` and the
    safetensors headers without loading any weights; empty for a folder without them (a LoRA adapter)."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return {}
    from safetensors import safe_open
    from transformers import AutoConfig

    from ..checks import context_length

    config = AutoConfig.from_pretrained(folder)
    text_config = getattr(config, "text_config", None) or config
    facts = {"embed_dim": getattr(text_config, "hidden_size", None), "max_tokens": context_length(config)}
    shards = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    if shards:
        n_params = 0
        for shard in shards:
            with safe_open(os.path.join(folder, shard), framework="np") as f:
                for key in f.keys():
                    n_params += int(np.prod(f.get_slice(key).get_shape()))
        facts["n_parameters"] = n_params
    return facts


def load_grace_mteb_model(name: str, revision: str | None = None, *, model_path: str | None = None,
                          rationale: bool = True, max_new_tokens: int | None = None, task_instructions: bool = False,
                          device: str | None = None, **encoder_kwargs) -> GRACEMTEBEncoder:
    """mteb loader (``ModelMeta.loader``): ``name`` is mteb's model name, ``model_path`` the folder or Hub id.

    mteb passes ``experiment_kwargs`` (``rationale``, ``max_new_tokens``, ...) back as keywords, so a result
    folder and the settings that produced it cannot drift apart.
    """
    source = model_path or name
    if not os.path.isdir(source) and source not in MODEL_ALIASES:
        from huggingface_hub import snapshot_download

        source = snapshot_download(source, revision=revision)  # the exact revision mteb files results under
    encoder = GRACEEncoder.from_pretrained(source, device=device, **encoder_kwargs)
    return GRACEMTEBEncoder(encoder, use_rationale=rationale, max_new_tokens=max_new_tokens, name=name,
                            use_task_instructions=task_instructions)


def grace_model_meta(name_or_path: str, *, use_rationale: bool = True, max_new_tokens: int | None = None,
                     revision: str | None = None, name: str | None = None, **encoder_kwargs) -> ModelMeta:
    """An mteb ``ModelMeta`` for a GRACE checkpoint (local folder, alias or Hub id) with a loader.

    ``meta.load_model()`` returns the encoder, and ``mteb.evaluate(meta.load_model(), tasks)`` files results
    under ``name`` (default: the Hub id, or ``grace-trl/<folder name>``) and ``revision`` (default: a content
    hash for a local folder; the given Hub revision, else none, for a Hub id).
    """
    from ..aliases import resolve_model_name
    from ..settings import GRACESettings

    local = name_or_path in MODEL_ALIASES or os.path.isdir(os.path.expanduser(name_or_path))
    path = resolve_model_name(name_or_path) if local else name_or_path
    if not local and re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path) is None:
        raise FileNotFoundError(f"{name_or_path} is neither a local checkpoint folder, a model alias "
                                f"({', '.join(MODEL_ALIASES)}) nor a Hub id (organization/name)")
    settings = GRACESettings.load(path) if local else None
    if max_new_tokens is None and use_rationale:
        max_new_tokens = settings.max_new_tokens if settings is not None else GRACESettings().max_new_tokens
    experiment = {"rationale": use_rationale}
    if use_rationale:
        experiment["max_new_tokens"] = int(max_new_tokens)
    facts = _local_model_facts(path) if local else {}
    max_tokens = facts.get("max_tokens")
    return ModelMeta(
        loader=load_grace_mteb_model,
        loader_kwargs={"model_path": path, **encoder_kwargs},
        name=name or _mteb_name(name_or_path),
        revision=revision or (_weights_digest(path) if local else None),
        release_date=None,
        languages=None,
        n_parameters=facts.get("n_parameters"),
        memory_usage_mb=None,
        max_tokens=float(max_tokens) if max_tokens else None,
        embed_dim=facts.get("embed_dim"),
        license=None,
        open_weights=True,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch"],
        reference="https://arxiv.org/abs/2510.04506",
        similarity_fn_name=ScoringFunction.COSINE,
        use_instructions=False,
        training_datasets=None,
        experiment_kwargs=experiment,
    )


def with_embedding_cache(model: GRACEMTEBEncoder, cache_dir: str | os.PathLike):
    """mteb's own ``CachedEmbeddingWrapper`` around a GRACE encoder, in a folder per model, weights and settings.

    mteb keys a cached vector by task, prompt type, ``experiment_kwargs`` (rationale, max_new_tokens, ...) and
    the input item only; the folder adds what else changes a vector: the weights (the revision is the encoder's
    weight fingerprint) and the GRACE settings (system prompt, pooling, chat template kwargs). It sits beside the
    rationale cache, which saves generation when the same texts are embedded under other settings.
    """
    import dataclasses
    import hashlib
    import json
    from pathlib import Path

    from mteb.models.cache_wrappers import CachedEmbeddingWrapper
    from mteb.models.cache_wrappers.cache_backends.numpy_cache import NumpyCache

    class SmallNumpyCache(NumpyCache):
        """mteb's vector file starts at 100,000 rows (230 MB for SmolLM2's 576 dimensions, even for 3 pairs); it
        doubles when full, so start small."""

        def __init__(self, directory, initial_vectors: int = 1024):
            super().__init__(directory, initial_vectors=initial_vectors)

    meta = model.mteb_model_meta
    settings = {**dataclasses.asdict(model.encoder.settings), "backend": model.encoder.backend_name}
    if model.system_prompt is not _UNSET:  # the wrapper's override, which encode() uses instead
        settings["system_prompt"] = model.system_prompt
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = Path(cache_dir) / meta.model_name_as_path() / (meta.revision or "no_revision") / f"settings_{digest}"
    return CachedEmbeddingWrapper(model, path, cache_backend=SmallNumpyCache)
