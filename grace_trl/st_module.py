"""A sentence-transformers input module that embeds exactly as ``GRACEEncoder.encode(use_rationale=False)``.

Stock modules cannot express GRACE's no-rationale embedding: the text is rendered through the chat template
(system prompt, instruction, role headers, generation prompt) and the mean is taken from the first token of
the user content to the end of the prompt, so the system prompt never enters the vector. This module builds
the prompt with :class:`~grace_trl.prompts.PromptEncoder` and pools with :func:`~grace_trl.pooling.pool_span`,
the functions the trainer and the encoder use, so the three agree. sentence-transformers imports it by the
``type`` recorded in ``modules.json`` (``grace_trl`` must be installed).

A sentence-transformers ``prompt`` (or ``prompt_name``) replaces the checkpoint's GRACE instruction, which is
what ``GRACEEncoder.encode(prompt=...)`` does as well. This differs from most sentence-transformers models, where
a prompt is a prefix of the text: here the text stays as it is and the prompt moves into the chat template. The
saved ``query``/``document`` prompts are empty, so ``encode_query`` and ``encode_document`` embed as training
did.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Sequence

import torch
from sentence_transformers.base.modules.input_module import InputModule

from .checks import check_complete_save
from .pooling import get_backbone, masked_mean, pool_span, span_mask
from .prompts import PromptEncoder
from .settings import SETTINGS_FILE, GRACESettings

ST_ROOT_FILES = ("modules.json", "config_sentence_transformers.json")
MODULE_CONFIG_FILE = "grace_sentence_transformers.json"
# The poolings a module without a rationale reproduces (GRACEEncoder.encode(use_rationale=False)); "rationale"
# pools generated tokens only, which a sentence-transformers module cannot write.
SENTENCE_TRANSFORMERS_POOLING = ("mean", "last")


def check_sentence_transformers_pooling(settings: GRACESettings) -> None:
    """Refuse a pooling the sentence-transformers module cannot express, rather than export a different embedding."""
    if settings.pooling not in SENTENCE_TRANSFORMERS_POOLING:
        raise ValueError(
            f"pooling={settings.pooling!r} cannot be exported for sentence-transformers: it pools the generated "
            f"rationale, and a sentence-transformers module writes none (exportable: "
            f"{SENTENCE_TRANSFORMERS_POOLING}). Embed this checkpoint with GRACEEncoder.")


class GRACETransformer(InputModule):
    """Causal LM + GRACE prompt → pooled no-rationale embedding (``sentence_embedding``, not normalised)."""

    config_file_name = MODULE_CONFIG_FILE
    config_keys = ["max_seq_length"]
    save_in_root = True

    def __init__(self, model, tokenizer, settings: GRACESettings | None = None, max_seq_length: int | None = None,
                 save_weights: bool = True):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer is not None and tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.settings = settings or GRACESettings()
        check_sentence_transformers_pooling(self.settings)
        # None: no truncation, as GRACEEncoder; a limit cuts the templated prompt from the right.
        self.max_seq_length = max_seq_length
        # False writes only the configuration, for a folder whose weights a trainer has already saved.
        self.save_weights = save_weights
        self._prompt_encoders: dict = {}

    # --------------------------------------------------------------- loading / saving
    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             model_kwargs: dict[str, Any] | None = None, **kwargs) -> "GRACETransformer":
        from transformers import AutoTokenizer

        from .encoder import _load_causal_lm

        hub = dict(token=token, cache_folder=cache_folder, revision=revision, local_files_only=local_files_only)
        config = cls.load_config(model_name_or_path, subfolder=subfolder, **hub)
        settings_path = cls.load_file_path(model_name_or_path, SETTINGS_FILE, subfolder=subfolder, **hub)
        if settings_path is None:
            raise FileNotFoundError(f"{model_name_or_path} has no {SETTINGS_FILE}: it is not a GRACE checkpoint")
        settings = GRACESettings.load(os.path.dirname(settings_path))
        path = model_name_or_path if os.path.isdir(model_name_or_path) else os.path.dirname(settings_path)
        check_complete_save(path)
        dtype = (model_kwargs or {}).get("dtype") or (model_kwargs or {}).get("torch_dtype") or torch.float32
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = _load_causal_lm(path, dtype, "cpu")
        return cls(model, tokenizer, settings, max_seq_length=config.get("max_seq_length"))

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        if self.save_weights:
            self.model.save_pretrained(output_path, safe_serialization=safe_serialization)
            self.tokenizer.save_pretrained(output_path)
        self.settings.save(output_path)
        self.save_config(output_path)

    # --------------------------------------------------------------- encoding
    def _prompt_encoder(self, instruction: str | None) -> PromptEncoder:
        if instruction not in self._prompt_encoders:
            self._prompt_encoders[instruction] = PromptEncoder(
                self.tokenizer, self.settings.system_prompt, instruction,
                getattr(self.settings, "chat_template_kwargs", None))
        return self._prompt_encoders[instruction]

    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
        texts = [inp[0] if isinstance(inp, tuple) and len(inp) == 1 else inp for inp in inputs]
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"GRACE embeds text only; input {i} is a {type(text).__name__}")
        pe = self._prompt_encoder(prompt if prompt else self.settings.instruction)
        sequences, spans = [], []
        for text in texts:
            enc = pe(text)
            ids = list(enc.input_ids)
            start, end = pool_span(len(ids), enc.content_start, 0, self.settings.pooling)
            if self.max_seq_length is not None and len(ids) > self.max_seq_length:
                ids = ids[: self.max_seq_length]
                start, end = min(start, self.max_seq_length - 1), self.max_seq_length
            sequences.append(ids)
            spans.append((start, end))
        length = max(len(s) for s in sequences)
        # right padding: with causal attention the real tokens' states equal the unpadded forward's
        input_ids = torch.full((len(sequences), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for r, seq in enumerate(sequences):
            input_ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[r, : len(seq)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pooling_mask": span_mask(spans, length)}

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        body = get_backbone(self.model)
        hidden = body(input_ids=features["input_ids"], attention_mask=features["attention_mask"],
                      use_cache=False).last_hidden_state
        features["token_embeddings"] = hidden
        features["sentence_embedding"] = masked_mean(hidden, features["pooling_mask"], normalize=False)
        return features

    def get_embedding_dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def get_sentence_embedding_dimension(self) -> int:
        return self.get_embedding_dimension()


def sentence_transformer(model, tokenizer, settings: GRACESettings | None = None):
    """A ``SentenceTransformer`` around an already loaded GRACE model (no copy of the weights)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize

    return SentenceTransformer(modules=[GRACETransformer(model, tokenizer, settings), Normalize()],
                               device=str(next(model.parameters()).device), similarity_fn_name="cosine")


GRACE_MODULE_TYPE = f"{__name__}.GRACETransformer"


def _model_folder(model_name_or_path: str, kwargs: dict) -> str:
    """A local folder: the path itself, or the Hub snapshot that is then checked and loaded (one revision)."""
    if os.path.isdir(model_name_or_path):
        return model_name_or_path
    from huggingface_hub import snapshot_download

    return snapshot_download(model_name_or_path, revision=kwargs.pop("revision", None), token=kwargs.get("token"),
                             cache_dir=kwargs.get("cache_folder"),
                             local_files_only=kwargs.get("local_files_only", False))


def load_sentence_transformer(model_name_or_path: str, **kwargs):
    """``SentenceTransformer(path)`` for a GRACE folder or Hub repo, without ``trust_remote_code=True``.

    ``trust_remote_code=True`` lets a repo's ``modules.json`` name any class, including code shipped in the
    repo itself. Here every module type must be grace_trl's :class:`GRACETransformer` or a class of
    sentence-transformers; the GRACE module is handed over as an installed class and everything else loads
    with ``trust_remote_code=False``, so nothing from the repo runs. A folder whose save did not finish is
    refused. ``kwargs`` go to ``SentenceTransformer`` (``device``, ``local_files_only``, ...).
    """
    from sentence_transformers import SentenceTransformer

    if kwargs.pop("trust_remote_code", False):
        raise ValueError("load_sentence_transformer never runs a repo's own code; drop trust_remote_code=True")
    folder = _model_folder(str(model_name_or_path), kwargs)
    check_complete_save(folder)
    modules_path = os.path.join(folder, "modules.json")
    if not os.path.isfile(modules_path):
        raise FileNotFoundError(f"{model_name_or_path} has no modules.json: not a GRACE sentence-transformers folder "
                                "(GRACEEncoder.from_pretrained loads any GRACE checkpoint)")
    with open(modules_path, encoding="utf-8") as f:
        modules = json.load(f)
    if not isinstance(modules, list):
        raise ValueError(f"{modules_path}: expected a list of modules")
    for i, entry in enumerate(modules):
        kind = entry.get("type") if isinstance(entry, dict) else None
        if not isinstance(kind, str) or not (kind == GRACE_MODULE_TYPE or kind.startswith("sentence_transformers.")):
            raise ValueError(f"{modules_path}: module {i} has type {kind!r}; only {GRACE_MODULE_TYPE} and "
                             "sentence_transformers classes are loaded (anything else would run code from the repo)")
    return SentenceTransformer._load_with_module_classes(folder, {GRACE_MODULE_TYPE: GRACETransformer}, **kwargs)


def write_sentence_transformers_files(folder: str, settings: GRACESettings | None = None,
                                      max_seq_length: int | None = None) -> None:
    """Add sentence-transformers' configuration to a saved checkpoint folder; its weights stay as saved.

    sentence-transformers writes its own files into a scratch folder (no weights: the module runs in
    configuration-only mode) and only those are copied into ``folder``, along with ``grace_config.json``.
    """
    import logging

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize

    settings = settings or GRACESettings.load(folder)
    if settings is None:
        raise FileNotFoundError(f"{folder} has no {SETTINGS_FILE}; save the GRACE settings first")
    check_sentence_transformers_pooling(settings)
    if max_seq_length is None:
        max_seq_length = model_context_length(folder)
    module = GRACETransformer(None, None, settings, max_seq_length=max_seq_length, save_weights=False)
    st_model = SentenceTransformer(modules=[module, Normalize()], device="cpu", similarity_fn_name="cosine")
    st_logger = logging.getLogger("sentence_transformers")
    level = st_logger.level
    with tempfile.TemporaryDirectory() as tmp:
        st_logger.setLevel(logging.WARNING)  # "Saving model to /tmp/tmp...": a scratch folder, not news to a user
        try:
            st_model.save(tmp, create_model_card=False)
        finally:
            st_logger.setLevel(level)
        with open(os.path.join(tmp, "modules.json"), encoding="utf-8") as f:
            modules = json.load(f)
        for name in (*ST_ROOT_FILES, MODULE_CONFIG_FILE, SETTINGS_FILE):
            shutil.copy2(os.path.join(tmp, name), os.path.join(folder, name))
        for entry in modules:
            if entry["path"]:
                dst = os.path.join(folder, entry["path"])
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(os.path.join(tmp, entry["path"]), dst)


def model_context_length(folder: str) -> int | None:
    """The positions the model in ``folder`` attends to (its config), sentence-transformers' ``max_seq_length``."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return None
    from transformers import AutoConfig

    from .checks import context_length

    return context_length(AutoConfig.from_pretrained(folder))
