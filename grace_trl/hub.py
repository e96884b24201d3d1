"""Publish a GRACE checkpoint as one Hub repo that transformers, vLLM and sentence-transformers all load.

The folder holds the causal-LM weights and tokenizer unchanged (so it still generates rationales),
``grace_config.json`` (so :class:`~grace_trl.encoder.GRACEEncoder` embeds exactly as training did), a
model card, and sentence-transformers files. A sentence-transformers module cannot generate a rationale,
so ``grace_trl.load_sentence_transformer(repo)`` is GRACE's *no-rationale* encoder, equal to
``GRACEEncoder.encode(..., use_rationale=False)`` (see :mod:`grace_trl.st_module`). The
rationale-conditioned embedding (GRACE's main mode) needs ``GRACEEncoder``."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, Mapping

from .settings import SETTINGS_FILE, GRACESettings

logger = logging.getLogger("grace_trl")

def write_sentence_transformers_files(folder: str, settings: GRACESettings, max_seq_length: int | None = None) -> None:
    """sentence-transformers' files for the model in ``folder`` (weights untouched): see :mod:`grace_trl.st_module`."""
    from .st_module import write_sentence_transformers_files as write

    write(folder, settings, max_seq_length)


def _load_results(results: str | Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from a dict or a JSON file; numbers only, so the card never shows junk."""
    if results is None:
        return {}
    if isinstance(results, (str, os.PathLike)):
        with open(results, encoding="utf-8") as f:
            results = json.load(f)
    if not isinstance(results, Mapping):
        raise ValueError(f"results must map task -> {{metric: value}}, got {type(results).__name__}")
    table: dict[str, dict[str, float]] = {}
    for task, metrics in results.items():
        if not isinstance(metrics, Mapping):
            raise ValueError(f"results[{task!r}] must map metric -> number, got {type(metrics).__name__}")
        for metric, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"results[{task!r}][{metric!r}] must be a number, got {value!r}")
        table[str(task)] = {str(m): float(v) for m, v in metrics.items()}
    return table


def model_card(repo_id: str, settings: GRACESettings, base_model: str | None = None,
               results: Mapping[str, Mapping[str, float]] | None = None,
               training: Mapping[str, Any] | None = None, license: str | None = None) -> str:
    """README.md text of the pushed repo (see :func:`grace_trl.model_card.build_model_card`)."""
    from .model_card import build_model_card

    return str(build_model_card(repo_id, settings, base_model=base_model, license=license, results=results,
                                training=training))


def _card_base_model(checkpoint_dir: str) -> str | None:
    """The base model named by the card the trainer wrote next to the checkpoint, if any."""
    from huggingface_hub import ModelCard

    for folder in (checkpoint_dir, os.path.dirname(os.path.abspath(checkpoint_dir))):
        path = os.path.join(folder, "README.md")
        if os.path.isfile(path):
            return ModelCard.load(path).data.base_model
    return None


def _training_summary(checkpoint_dir: str) -> dict[str, Any] | None:
    """Key hyper-parameters from a Trainer's training_args.bin-free export: trainer_state.json if present."""
    path = os.path.join(checkpoint_dir, "trainer_state.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    keys = ("global_step", "max_steps", "num_train_epochs", "train_batch_size")
    return {k: state[k] for k in keys if k in state} or None


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a Hub model id (``name`` or ``namespace/name``, Hub naming rules), else a ValueError.

    It is written into the model card's code and sent to the Hub, so quotes or a newline must never get that far.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"--repo-id must be a Hub model id like 'org/name', got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"--repo-id {repo_id!r} is not a valid Hub model id ('org/name'; letters, digits, '-', '_', "
                         f"'.'; at most 96 characters): {' '.join(str(err).split())}") from None
    return repo_id


def prepare_hub_folder(checkpoint_dir: str, output_dir: str, repo_id: str = "grace-model",
                       results: str | Mapping[str, Any] | None = None, base_model: str | None = None,
                       max_seq_length: int | None = None, overwrite: bool = False) -> str:
    """Write the folder that :func:`push_to_hub` uploads. A LoRA checkpoint is merged first."""
    from transformers import AutoTokenizer

    from .export import adapter_base_model, export_checkpoint, is_adapter_checkpoint
    from .st_module import check_sentence_transformers_pooling

    check_repo_id(repo_id)
    # the folder ships a sentence-transformers module: refuse a pooling it would silently change, before any work
    check_sentence_transformers_pooling(GRACESettings.load(checkpoint_dir) or GRACESettings())
    if is_adapter_checkpoint(checkpoint_dir):
        base_model = base_model or adapter_base_model(checkpoint_dir)
    table = _load_results(results)  # validate before doing any work
    export_checkpoint(checkpoint_dir, output_dir, "merge", base_model=base_model, overwrite=overwrite)
    settings = GRACESettings.load(output_dir)
    if settings is None:
        logger.warning("%s has no %s; writing GRACE's defaults so every loader agrees", checkpoint_dir, SETTINGS_FILE)
        settings = GRACESettings()
        settings.save(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    if tokenizer.pad_token is None:  # sentence-transformers pads batches (GRACEEncoder does the same)
        tokenizer.pad_token = tokenizer.eos_token
        tokenizer.save_pretrained(output_dir)
    write_sentence_transformers_files(output_dir, settings, max_seq_length)
    from .aliases import hub_base_model

    # an alias names its Hub original; a local path means nothing on the Hub
    base_model, license_ = hub_base_model(base_model or _card_base_model(checkpoint_dir))
    with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(repo_id, settings, base_model, table, _training_summary(checkpoint_dir), license_))
    return output_dir


def push_to_hub(checkpoint_dir: str, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str = "Upload GRACE model", results: str | Mapping[str, Any] | None = None,
                base_model: str | None = None, revision: str | None = None) -> str:
    """Prepare the folder in a temporary directory, create the repo if needed and upload it in one commit.

    Returns the commit URL. The token goes to huggingface_hub only and is never logged.
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="grace-push-") as tmp:
        folder = prepare_hub_folder(checkpoint_dir, os.path.join(tmp, "repo"), repo_id, results, base_model)
        api = HfApi(token=token)
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        logger.info("uploading %s to %s", checkpoint_dir, repo_url)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                   repo_type="model", revision=revision)
    return str(getattr(commit, "commit_url", commit))
