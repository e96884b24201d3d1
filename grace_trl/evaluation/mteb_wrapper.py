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

from ..encoder import GRACEEncoder


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
    ):
        self.encoder = encoder
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
        instruction = {}
        if self.use_task_instructions:
            task_instruction = self.get_instruction(task_metadata, prompt_type)
            if task_instruction:
                instruction = {"instruction": task_instruction}
        return self.encoder.encode(
            texts,
            batch_size=int(kwargs.get("batch_size") or 16),
            max_new_tokens=self.max_new_tokens,
            use_rationale=self.use_rationale,
            show_progress_bar=bool(kwargs.get("show_progress_bar", self.show_progress_bar)),
            convert_to_numpy=True,
            **instruction,
        )
