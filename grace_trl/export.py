"""A training checkpoint → a clean model folder (LoRA merged, or adapter only); ``grace-trl export`` calls it.

Trainer checkpoints carry optimizer and RNG states that nobody serving the model needs, and a LoRA
run leaves an adapter whose ``base_model_name_or_path`` may be a local path of the training
machine. ``mode="merge"`` folds the adapter into the base weights (peft ``merge_and_unload``) so
transformers, vLLM and sentence-transformers load a plain checkpoint; ``mode="adapter"`` keeps only
the adapter (optionally re-pointed at a Hub base with ``base_model``). ``grace_config.json`` travels
with both, because an encoder needs it to embed exactly as training did.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil

from .checks import check_complete_save
from .files import current_umask
from .settings import SETTINGS_FILE

logger = logging.getLogger("grace_trl")

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
MODEL_FILE_PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                       "pytorch_model*.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILE_PATTERNS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                           "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


def is_adapter_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def _copy_matching(src: str, dst: str, patterns, exclude=()) -> list[str]:
    copied = []
    for name in sorted(os.listdir(src)):
        full = os.path.join(src, name)
        if not os.path.isfile(full) or name in exclude:
            continue
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            shutil.copy2(full, os.path.join(dst, name))
            copied.append(name)
    return copied


def _has_tokenizer(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json"))


def _check_output_location(checkpoint: str, output: str) -> None:
    """Refuse an ``output`` that is, holds or lies inside the checkpoint or its training folder.

    ``--overwrite`` deletes ``output``; when the checkpoint lives in it (``--checkpoint OUT/checkpoint-2
    --output OUT``) that would delete the run it is exporting.
    """
    ckpt, out = os.path.realpath(checkpoint), os.path.realpath(output)
    protected = [ckpt]
    parent = os.path.dirname(ckpt)
    if os.path.basename(ckpt).startswith("checkpoint-") or os.path.isfile(os.path.join(parent, "trainer_state.json")):
        protected.append(parent)  # the training folder around checkpoint-N
    for folder in protected:
        if out == folder or out.startswith(folder + os.sep) or ckpt.startswith(out + os.sep):
            raise ValueError(f"--output {output} is, contains or lies inside the checkpoint or its training folder "
                             f"{folder}; export to a separate folder")


def _staging_folder(output: str) -> str:
    """A fresh folder next to ``output``: the export is written there and renamed into place when complete."""
    import tempfile

    parent = os.path.dirname(os.path.abspath(output)) or "."
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output))}-", suffix=".export-tmp",
                            dir=parent)


def _install_output(staging: str, output: str, overwrite: bool) -> None:
    """Replace ``output`` by the complete ``staging`` folder; the old folder is deleted only after the rename."""
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        if not overwrite:
            raise FileExistsError(f"{output} exists and is not empty; pass --overwrite to replace it")
        old = staging + ".old"
        os.replace(output, old)
        os.replace(staging, output)
        if os.path.isdir(old):
            shutil.rmtree(old)
        else:
            os.remove(old)
    else:
        if os.path.isdir(output):
            os.rmdir(output)
        os.replace(staging, output)
    # mkdtemp creates 0700; the exported model is meant to be shared as any folder the user creates
    os.chmod(output, 0o777 & ~current_umask())


def _copy_settings(checkpoint: str, output: str) -> bool:
    src = os.path.join(checkpoint, SETTINGS_FILE)
    if os.path.isfile(src):
        shutil.copy2(src, os.path.join(output, SETTINGS_FILE))
        return True
    logger.warning("%s has no %s: encoders will fall back to GRACE's default prompt settings", checkpoint,
                   SETTINGS_FILE)
    return False


def adapter_base_model(checkpoint: str) -> str | None:
    with open(os.path.join(checkpoint, "adapter_config.json"), encoding="utf-8") as f:
        return json.load(f).get("base_model_name_or_path")


def merge_adapter(checkpoint: str, output: str, base_model: str | None = None, dtype: str | None = None) -> None:
    """Load base + adapter, merge_and_unload, save a plain causal-LM checkpoint with its tokenizer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .aliases import resolve_model_name

    base = base_model or adapter_base_model(checkpoint)
    if not base:
        raise ValueError(f"{checkpoint}/adapter_config.json names no base_model_name_or_path; pass --base-model")
    try:
        base_path = resolve_model_name(base)
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype or "auto")
    except OSError as exc:
        # FileNotFoundError: grace-trl prints it as one line
        reason = " ".join(str(exc).split())
        raise FileNotFoundError(f"cannot load the base model {base!r} of adapter {checkpoint} ({reason}); "
                                "pass --base-model with a local folder or Hub id") from exc
    merged = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    merged.save_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint if _has_tokenizer(checkpoint) else base_path)
    tokenizer.save_pretrained(output)


def export_checkpoint(checkpoint: str, output: str, mode: str = "merge", base_model: str | None = None,
                      dtype: str | None = None, overwrite: bool = False) -> dict:
    """Write ``output`` from ``checkpoint``; ``mode`` is ``"merge"`` or ``"adapter"``. Returns a summary."""
    if mode not in ("merge", "adapter"):
        raise ValueError(f"mode must be 'merge' or 'adapter', got {mode!r}")
    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"checkpoint folder {checkpoint} does not exist")
    check_complete_save(checkpoint)
    adapter = is_adapter_checkpoint(checkpoint)
    if not adapter and not os.path.isfile(os.path.join(checkpoint, "config.json")):
        raise FileNotFoundError(f"{checkpoint} has neither adapter_config.json (LoRA) nor config.json (full model)")
    _check_output_location(checkpoint, output)
    if mode == "adapter" and not adapter:
        raise ValueError(f"{checkpoint} is a full checkpoint, not a LoRA adapter: nothing to export with --adapter")
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass --overwrite to replace it")
    staging = _staging_folder(output)
    try:
        summary = {"checkpoint": checkpoint, "output": output, "mode": mode, "lora": adapter}
        if adapter and mode == "merge":
            merge_adapter(checkpoint, staging, base_model, dtype)
            summary["base_model"] = base_model or adapter_base_model(checkpoint)
        elif adapter:
            files = _copy_matching(checkpoint, staging, ADAPTER_FILES + TOKENIZER_FILE_PATTERNS)
            if base_model:
                path = os.path.join(staging, "adapter_config.json")
                with open(path, encoding="utf-8") as f:
                    cfg = json.load(f)
                cfg["base_model_name_or_path"] = base_model
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(cfg, f, indent=2)
            summary.update(files=files, base_model=base_model or adapter_base_model(checkpoint))
        else:
            files = _copy_matching(checkpoint, staging, MODEL_FILE_PATTERNS + TOKENIZER_FILE_PATTERNS)
            summary["files"] = files
        summary["grace_config"] = _copy_settings(checkpoint, staging)
        if summary["grace_config"]:
            from .settings import GRACESettings
            from .st_module import SENTENCE_TRANSFORMERS_POOLING, write_sentence_transformers_files

            # SentenceTransformer(output) embeds as GRACEEncoder(use_rationale=False)
            pooling = GRACESettings.load(staging).pooling
            summary["sentence_transformers"] = pooling in SENTENCE_TRANSFORMERS_POOLING
            if summary["sentence_transformers"]:
                write_sentence_transformers_files(staging)
            else:
                logger.warning("pooling=%r has no sentence-transformers equivalent; %s is for GRACEEncoder only",
                               pooling, output)
        _install_output(staging, output, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary
