"""Content-addressed on-disk cache of generated rationales.

Generation dominates encoding cost, so a rationale is stored under a key that hashes everything
that determines it: the model's weights (a fingerprint), the prompt (system prompt, instruction,
chat template, the text itself) and the generation settings. Change any of them and the key
changes, so a stale rationale is never reused.

Entries are written to a temporary file in the same directory and renamed into place with
``os.replace``, which is atomic on POSIX and Windows: a reader sees either no entry or a whole
one, an interrupted run leaves at most an orphaned temporary file, and several processes writing
the same key simply race to install identical (or equally valid) files. Each entry carries a
checksum of its payload; an entry that fails to parse or to verify is deleted and reported as a
miss so the caller regenerates it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import atomic_write

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def make_key(**parts: Any) -> str:
    """SHA-256 over the canonical JSON of ``parts`` (all values must be JSON-serialisable)."""
    return hashlib.sha256(_canonical({"v": CACHE_FORMAT_VERSION, **parts})).hexdigest()


def model_fingerprint(model, tokenizer=None) -> str:
    """A content hash of a model: every weight's bytes, its config (less its path) and the tokenizer.

    Every value is hashed, so a fine-tune that moves only the inside of a tensor changes the key; where the
    checkpoint lives does not (``_name_or_path`` is left out), so a moved or copied folder keeps its hits.
    Hashing runs at several GB/s, far below the cost of generating one batch of rationales.
    """
    import json

    import torch

    base = _base_of_noop_adapter(model)
    if base is not None:
        model, state = base
    else:
        state = model.state_dict()
    h = hashlib.sha256()
    h.update(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None:
        data = config.to_dict()
        for key in ("_name_or_path", "transformers_version"):
            data.pop(key, None)
        h.update(json.dumps(data, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in sorted(state.items()):
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode())
            h.update(str(tensor.dtype).encode())
            flat = tensor.detach().reshape(-1).contiguous().cpu()
            # bytes as stored, whatever the dtype (numpy has no bfloat16)
            h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    if tokenizer is not None:
        h.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
        h.update(str(len(tokenizer)).encode())
        vocab = getattr(tokenizer, "get_vocab", None)
        if vocab is not None:
            h.update(json.dumps(sorted(vocab().items())).encode())
    return h.hexdigest()


def _base_of_noop_adapter(model):
    """The base model and its plain state dict when ``model`` is a LoRA-wrapped model whose adapters change nothing.

    A fresh LoRA adapter starts with every ``lora_B`` at zero, so the wrapped model computes exactly what the base
    model does; keying it as the base model lets a LoRA run reuse the base model's cached dev evaluation and
    generation check. Any other adapter (a trained ``lora_B``, ``modules_to_save``, other PEFT methods) returns
    None and is hashed as it is.
    """
    import torch

    if not getattr(model, "peft_config", None) or not hasattr(model, "get_base_model"):
        return None
    base = model.get_base_model()
    plain = {}
    with torch.no_grad():
        for name, tensor in base.state_dict().items():
            if ".lora_A." in name or ".lora_embedding_A." in name:
                continue
            if ".lora_B." in name or ".lora_embedding_B." in name:
                if torch.count_nonzero(tensor):
                    return None
                continue
            if "lora_" in name or "modules_to_save" in name or "original_module" in name:
                return None  # an adapter part this rule does not know: hash the wrapped model as it is
            plain[name.replace(".base_layer.", ".")] = tensor
    return base, plain


@dataclass(frozen=True)
class CachedRationale:
    completion_ids: list[int]
    text: str
    truncated: bool  # generation stopped at max_new_tokens without an EOS


def _payload_checksum(payload: dict) -> str:
    return hashlib.sha256(_canonical(payload)).hexdigest()


class RationaleCache:
    """Directory of ``<key[:2]>/<key>.json`` entries; safe to share between processes."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.recovered = 0  # corrupt entries deleted (and so regenerated by the caller)

    def path(self, key: str) -> Path:
        if len(key) < 8 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be a hex digest, got {key!r}")
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> CachedRationale | None:
        """The stored rationale, or None on a miss or an unreadable entry (which is removed)."""
        path = self.path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError as err:  # a folder or an unreadable file in the entry's place: regenerate, leave it be
            logger.warning("rationale cache: cannot read entry %s (%s); it will be regenerated", path,
                           err.strerror or err)
            self.misses += 1
            return None
        try:
            entry = json.loads(raw.decode("utf-8"))
            payload = entry["payload"]
            if entry.get("key") != key:
                raise ValueError(f"entry holds key {entry.get('key')!r}")
            if entry.get("checksum") != _payload_checksum(payload):
                raise ValueError("checksum mismatch")
            ids = payload["completion_ids"]
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                raise ValueError("completion_ids is not a list of ints")
            result = CachedRationale(list(ids), str(payload["text"]), bool(payload["truncated"]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            logger.warning("rationale cache: dropping corrupt entry %s (%s); it will be regenerated", path, err)
            self._remove(path)
            self.recovered += 1
            self.misses += 1
            return None
        self.hits += 1
        return result

    def discard(self, key: str, reason: str) -> None:
        """Drop an entry that parsed but does not match what it claims (e.g. text and token ids disagree)."""
        path = self.path(key)
        logger.warning("rationale cache: dropping inconsistent entry %s (%s); it will be regenerated", path, reason)
        self._remove(path)
        self.hits -= 1
        self.misses += 1
        self.recovered += 1

    def put(self, key: str, rationale: CachedRationale, meta: dict | None = None) -> Path:
        """Atomically install one entry (temp file in the same directory + ``os.replace``)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "completion_ids": [int(i) for i in rationale.completion_ids],
            "text": rationale.text,
            "truncated": bool(rationale.truncated),
        }
        entry = {
            "version": CACHE_FORMAT_VERSION,
            "key": key,
            "payload": payload,
            "checksum": _payload_checksum(payload),
            "meta": meta or {},
        }
        try:
            with atomic_write(path, "wb") as f:
                f.write(json.dumps(entry, ensure_ascii=False).encode("utf-8"))
        except OSError as err:  # e.g. a folder in the entry's place: the rationale is still returned, only not kept
            logger.warning("rationale cache: cannot write entry %s (%s)", path, err.strerror or err)
        return path

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("??/*.json"))

    @staticmethod
    def _remove(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
