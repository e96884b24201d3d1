"""Reliability checks shared by the config, the trainer and the train command.

A wrong value should fail before the model loads and name its key; a run should never mix with an
older one in the same ``output_dir``; a step that cannot learn should say so instead of finishing
quietly with loss 0.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
import shutil
from typing import Iterable

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")
# safetensors writes into ``.tmpXXXXXX`` next to the target and renames it; a kill leaves the file behind.
TEMP_FILE_RE = re.compile(r"^\.tmp\w+$|\.tmp$")
# Consecutive steps without learning signal before the warning adds what to change.
DEAD_STEP_HINT_AFTER = 3
# Written last by every GRACE save: a folder a training run wrote without it holds a save that was cut short.
SAVE_MARKER = "grace_save_complete.json"
# What a training run leaves in a folder; with one of these and no SAVE_MARKER, the folder's save did not finish.
TRAINING_TRACES = ("training_args.bin", TRAINER_STATE, "rationale_samples.jsonl", "training_curves.csv")
# Top-level files of a finished run's model (removed when a new run overwrites the folder).
RUN_FILE_PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                     "pytorch_model*.bin", "pytorch_model.bin.index.json", "adapter_config.json", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
                     "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "grace_config.json",
                     "modules.json", "config_sentence_transformers.json", "grace_sentence_transformers.json",
                     "README.md", "training_args.bin", TRAINER_STATE, "training_curves.csv", "training_curves.png",
                     "grace_run.json", SAVE_MARKER)
LOCK_FILE = ".grace-trl.lock"


class RunStateError(ValueError):
    """The output folder or checkpoint does not allow what was asked (used, locked, incomplete, changed)."""


# ------------------------------------------------------------------ the TRL it is built on
# GRACETrainer overrides private GRPOTrainer methods; these are their signatures in the tested TRL.
TESTED_TRL = (1, 16)  # trl 1.16.x, as setup.cfg pins it
UNTESTED_TRL_ENV = "GRACE_TRL_ALLOW_UNTESTED_TRL"
TRL_OVERRIDES = {
    "_generate_single_turn": ("self", "prompt_ids", "images", "multimodal_fields", "num_generations",
                              "has_tool_images"),
    "_generate_and_score_completions": ("self", "inputs"),
    "_calculate_rewards": ("self", "inputs", "prompts", "completions", "completion_ids_list"),
    "_compute_loss": ("self", "model", "inputs"),
}


def check_trl_version(version: str, environ=None) -> None:
    """Refuse, in one line, a TRL outside the tested minor release (``GRACE_TRL_ALLOW_UNTESTED_TRL=1`` overrides).

    The overridden internals change between TRL releases without notice; a mismatch fails, or silently
    trains differently, deep inside the first step.
    """
    from packaging.version import InvalidVersion, Version

    environ = os.environ if environ is None else environ
    try:
        release = Version(version).release[:2]
    except InvalidVersion:
        release = None
    if release == TESTED_TRL:
        return
    tested = ".".join(map(str, TESTED_TRL))
    if environ.get(UNTESTED_TRL_ENV, "").strip().lower() in ("1", "true", "yes"):
        logger.warning("trl %s is outside grace_trl's tested range (trl %s.x); %s is set, continuing",
                       version, tested, UNTESTED_TRL_ENV)
        return
    raise RuntimeError(f"grace_trl is tested with trl {tested}.x (it overrides GRPOTrainer internals), found trl "
                       f"{version}: install trl>={tested}.0,<{TESTED_TRL[0]}.{TESTED_TRL[1] + 1} or set "
                       f"{UNTESTED_TRL_ENV}=1 to run anyway")


def check_trl_overrides(base: type) -> None:
    """Fail in one line when a GRPOTrainer method GRACETrainer overrides is gone or takes other arguments."""
    import inspect

    for name, expected in TRL_OVERRIDES.items():
        method = getattr(base, name, None)
        found = tuple(inspect.signature(method).parameters) if callable(method) else None
        if found != expected:
            raise RuntimeError(f"{base.__name__}.{name} takes {found} in this TRL, GRACETrainer overrides it as "
                               f"{expected}: install a tested trl ({'.'.join(map(str, TESTED_TRL))}.x)")


# ------------------------------------------------------------------ config values
def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_number(name: str, value, minimum: float, strict: bool = False, integer: bool = False,
                 owner: str = "GRACEConfig") -> None:
    """Raise a one-line error naming ``name`` unless ``value`` is a finite number ≥ (or >) ``minimum``."""
    kind = "an integer" if integer else "a number"
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
    ok_type = _is_int(value) if integer else _is_real(value)
    if not ok_type or not math.isfinite(float(value)) or (value <= minimum if strict else value < minimum):
        raise ValueError(f"{owner}: {name} must be {kind} {bound}, got {_describe(value)}")


def validate_config_values(cfg) -> None:
    """Type and range checks for GRACE's fields and the GRPO fields GRACE depends on.

    Runs at the start of ``GRACEConfig.__post_init__``: a YAML typo fails here, naming the key,
    instead of as a TypeError inside the reward or after the model has loaded.
    """
    for name in ("tau",):
        check_number(name, getattr(cfg, name), 0, strict=True)
    for name in ("lambda_consistency", "lambda_cross", "truncation_penalty", "anchor_temperature", "learning_rate"):
        check_number(name, getattr(cfg, name), 0)
    check_number("temperature", cfg.temperature, 0, strict=True)
    for name in ("max_completion_length", "embedding_batch_size", "per_device_train_batch_size"):
        check_number(name, getattr(cfg, name), 1, integer=True)
    for name in ("num_negatives", "num_sample_rationales"):
        check_number(name, getattr(cfg, name), 0, integer=True)
    if cfg.num_generations is not None:
        check_number("num_generations", cfg.num_generations, 1, integer=True)
    if isinstance(cfg.output_dir, str) and not cfg.output_dir.strip():
        raise ValueError(f"GRACEConfig: output_dir must name a folder, got {_describe(cfg.output_dir)}")
    if not _is_int(cfg.max_steps) or cfg.max_steps == 0 or cfg.max_steps < -1:
        # 0 is not "no training": transformers would still run a step and exit 0
        raise ValueError(f"GRACEConfig: max_steps must be an integer >= 1 (or -1 for num_train_epochs), "
                         f"got {_describe(cfg.max_steps)}")
    for name in ("system_prompt", "instruction"):
        value = getattr(cfg, name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"GRACEConfig: {name} must be a string or null, got {_describe(value)}")


# ------------------------------------------------------------------ non-finite values
def finite_or_none(value) -> float | None:
    """A float for JSON, or None for NaN/±inf (bare NaN is not JSON)."""
    value = float(value)
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------ output_dir and checkpoints
def checkpoint_dirs(output_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint-N`` folder, newest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = CHECKPOINT_RE.match(name)
        if m and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(m.group(1)), os.path.join(output_dir, name)))
    return sorted(found, reverse=True)


def checkpoint_problem(path: str) -> str | None:
    """Why ``path`` cannot be resumed from, or None when it is complete.

    The Trainer writes ``trainer_state.json`` after the weights, optimizer and RNG state, so a save
    interrupted at any point lacks it (or holds a truncated copy).
    """
    if not os.path.isdir(path):
        return "not a folder"
    state = os.path.join(path, TRAINER_STATE)
    if not os.path.isfile(state):
        return f"no {TRAINER_STATE} (the save was interrupted)"
    try:
        with open(state, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"{TRAINER_STATE} is not valid JSON ({err})"
    if not isinstance(data, dict) or not _is_int(data.get("global_step")):
        return f"{TRAINER_STATE} has no global_step"
    if not any(os.path.isfile(os.path.join(path, w)) for w in WEIGHT_FILES):
        return "no model weights"
    return None


def write_save_marker(folder: str, step: int | None = None) -> None:
    """Mark ``folder``'s save complete; called after every other file of the save is written."""
    from .files import atomic_write

    files = sorted(n for n in os.listdir(folder) if n != SAVE_MARKER and not n.startswith("."))
    with atomic_write(os.path.join(folder, SAVE_MARKER)) as f:
        json.dump({"global_step": step, "files": files}, f, indent=2)


def remove_save_marker(folder: str) -> None:
    """Called before a save starts writing, so a save cut short never keeps an earlier save's marker."""
    try:
        os.remove(os.path.join(folder, SAVE_MARKER))
    except FileNotFoundError:
        pass


def incomplete_save_problem(folder: str) -> str | None:
    """Why ``folder`` must not be loaded as a model: a training run wrote it and its save did not finish.

    A base model (no training traces) and a complete Trainer checkpoint (``trainer_state.json`` is written
    last) pass; so does any folder with :data:`SAVE_MARKER`.
    """
    if not os.path.isdir(folder) or os.path.isfile(os.path.join(folder, SAVE_MARKER)):
        return None
    if CHECKPOINT_RE.match(os.path.basename(os.path.normpath(folder))) and _trainer_checkpoint_whole(folder):
        return None
    traces = [n for n in TRAINING_TRACES if os.path.exists(os.path.join(folder, n))]
    traces += [os.path.basename(p) for _, p in checkpoint_dirs(folder)][:3]
    if not traces:
        return None
    newest = next((p for _, p in checkpoint_dirs(folder) if checkpoint_problem(p) is None), None)
    recover = (f"resume the run (resume_from_checkpoint=last) to finish it, or load {newest}" if newest else
               "resume the run (resume_from_checkpoint=last) to finish it")
    return (f"{folder} was written by a training run whose save did not finish (it has {', '.join(traces)} but no "
            f"{SAVE_MARKER}); {recover}. A folder saved whole by grace-trl before it wrote {SAVE_MARKER} can be "
            f"marked with grace_trl.checks.write_save_marker(folder)")


def _trainer_checkpoint_whole(folder: str) -> bool:
    """The Trainer writes ``trainer_state.json`` after the rest of a checkpoint: whole JSON there = whole save."""
    try:
        with open(os.path.join(folder, TRAINER_STATE), encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    return any(os.path.isfile(os.path.join(folder, w)) for w in WEIGHT_FILES)


def check_complete_save(folder: str) -> None:
    """Refuse a folder whose save was cut short (see :func:`incomplete_save_problem`)."""
    problem = incomplete_save_problem(folder)
    if problem is not None:
        raise RunStateError(problem)


def checkpoint_step(path: str) -> int:
    with open(os.path.join(path, TRAINER_STATE), encoding="utf-8") as f:
        return int(json.load(f)["global_step"])


def remove_orphaned_temp_files(output_dir: str) -> list[str]:
    """Delete temporary files left by saves that were killed (in ``output_dir`` and its checkpoints).

    Only called when this run owns ``output_dir`` (resuming or overwriting), so no save is in flight.
    """
    removed = []
    folders = [output_dir] + [p for _, p in checkpoint_dirs(output_dir)]
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if TEMP_FILE_RE.search(name) and os.path.isfile(path):
                os.remove(path)
                removed.append(path)
    if removed:
        logger.warning("removed %d temporary file(s) left by an interrupted save: %s", len(removed),
                       ", ".join(removed))
    return removed


def resolve_resume_checkpoint(output_dir: str, resume, clean: bool = True) -> str | None:
    """Turn ``resume_from_checkpoint`` (None, bool, ``"last"``/``"true"`` or a path) into a complete checkpoint.

    ``True``/``"last"`` picks the newest *complete* checkpoint, skipping incomplete ones with a warning.
    An explicit path must be complete. ``clean`` removes temporary files of interrupted saves (main
    process only).
    """
    if resume is None or resume is False or (isinstance(resume, str) and resume.lower() in ("", "false", "none")):
        return None
    if resume is True or (isinstance(resume, str) and resume.lower() in ("true", "last")):
        if clean:
            remove_orphaned_temp_files(output_dir)
        skipped = []
        for _, path in checkpoint_dirs(output_dir):
            problem = checkpoint_problem(path)
            if problem is None:
                for bad_path, why in skipped:
                    logger.warning("resume: skipping incomplete checkpoint %s (%s); resuming from %s",
                                   bad_path, why, path)
                return path
            skipped.append((path, problem))
        detail = "; ".join(f"{p}: {why}" for p, why in skipped) or "no checkpoint-N folders"
        raise RunStateError(f"resume_from_checkpoint={resume!r}: no complete checkpoint in {output_dir} ({detail})")
    path = str(resume)
    problem = checkpoint_problem(path)
    if problem is not None:
        raise RunStateError(f"resume_from_checkpoint {path}: cannot resume from it: {problem}")
    return path


def check_resumed_run(checkpoint: str, current: dict, run_file: str) -> None:
    """Refuse resuming with another embedding definition, model or data; warn about changed optimisation.

    ``current`` is :meth:`GRACETrainer.run_identity`; the checkpoint's copy is ``run_file`` (or, for a
    checkpoint saved before it existed, its ``grace_config.json``). A changed prompt or pooling would make
    ``grace_config.json`` describe an embedding that earlier steps never trained.
    """
    path = os.path.join(checkpoint, run_file)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    else:
        from .settings import GRACESettings

        settings = GRACESettings.load(checkpoint)
        if settings is None:
            return
        saved = {"embedding": {k: v for k, v in vars(settings).items() if k != "reward_variant"}}
    refused, warned = [], []
    for key, value in (current.get("embedding") or {}).items():
        if key in saved.get("embedding", {}) and saved["embedding"][key] != value:
            refused.append(f"{key}: {saved['embedding'][key]!r} -> {value!r}")
    for key, value in (current.get("model") or {}).items():
        if key in saved.get("model", {}) and saved["model"][key] != value:
            refused.append("model architecture differs from the checkpoint's" if key == "architecture" else
                           f"model {key}: {saved['model'][key]!r} -> {value!r}")
    if saved.get("data") is not None and current.get("data") is not None and saved["data"] != current["data"]:
        refused.append("the training data differs (other rows, order or max_train_samples)")
    for key, value in (current.get("optimisation") or {}).items():
        old = (saved.get("optimisation") or {}).get(key, value)
        if old != value:
            warned.append(f"{key}: {old!r} -> {value!r}")
    if saved.get("model_name") and current.get("model_name") and saved["model_name"] != current["model_name"]:
        warned.append(f"model_name_or_path: {saved['model_name']!r} -> {current['model_name']!r}")
    if refused:
        raise RunStateError(f"resume_from_checkpoint {checkpoint}: this run differs from the checkpoint's in what "
                            f"defines the embedding, the model or the data ({'; '.join(refused)}); restore them, or "
                            "start a new run in another output_dir")
    if warned:
        logger.warning("resume from %s with changed optimisation settings (%s): the resumed run will not reproduce "
                       "an uninterrupted one", checkpoint, "; ".join(warned))


def used_output_dir_entries(output_dir: str, samples_file: str) -> list[str]:
    """What in ``output_dir`` shows that a run already wrote there."""
    if not os.path.isdir(output_dir):
        return []
    names = set(os.listdir(output_dir))
    markers = [samples_file, TRAINER_STATE, "grace_config.json", SAVE_MARKER, "training_args.bin", *WEIGHT_FILES]
    found = [n for n in markers if n in names]
    found += [os.path.basename(p) for _, p in sorted(checkpoint_dirs(output_dir))]
    return found


def check_fresh_output_dir(output_dir: str, samples_file: str, resume, overwrite: bool, remove: bool = True) -> None:
    """Refuse a fresh run into a used ``output_dir``; with ``overwrite`` clear what would mix.

    A new run there would append to the old rationale samples, and a later ``resume last`` could
    pick up the old run's checkpoints. Only the main process passes ``remove``; every process refuses.
    """
    if resume not in (None, False) and not (isinstance(resume, str) and resume.lower() in ("", "false", "none")):
        return
    used = used_output_dir_entries(output_dir, samples_file)
    if not used:
        return
    if not overwrite:
        raise RunStateError(
            f"output_dir {output_dir} already holds a run ({', '.join(used[:6])}{', ...' if len(used) > 6 else ''}); "
            "pass overwrite_output_dir=True (--overwrite_output_dir true) to start over, "
            "resume_from_checkpoint=last to continue it, or choose another output_dir")
    if not remove:
        return
    removed = []
    samples = os.path.join(output_dir, samples_file)
    if os.path.isfile(samples):
        os.remove(samples)
        removed.append(samples_file)
    remove_save_marker(output_dir)  # first: the old model must never again look complete
    for _, path in checkpoint_dirs(output_dir):
        shutil.rmtree(path)
        removed.append(os.path.basename(path))
    removed += remove_run_files(output_dir)
    remove_orphaned_temp_files(output_dir)
    if removed:
        logger.warning("overwrite_output_dir: removed %s from %s", ", ".join(removed), output_dir)


def remove_run_files(output_dir: str) -> list[str]:
    """Delete a finished run's top-level model, card and sentence-transformers files (overwrite_output_dir).

    Otherwise a new run cut short before its final save would leave the old model under the new run's name.
    """
    import fnmatch

    removed = []
    modules = os.path.join(output_dir, "modules.json")
    if os.path.isfile(modules):
        try:
            with open(modules, encoding="utf-8") as f:
                folders = [m.get("path") for m in json.load(f) if isinstance(m, dict)]
        except (json.JSONDecodeError, UnicodeDecodeError):
            folders = []
        for sub in folders:
            full = os.path.join(output_dir, sub) if sub else None
            if full and os.path.isdir(full) and os.path.dirname(os.path.normpath(sub)) == "":
                shutil.rmtree(full)
                removed.append(sub)
    for name in sorted(os.listdir(output_dir)):
        full = os.path.join(output_dir, name)
        if os.path.isfile(full) and any(fnmatch.fnmatch(name, p) for p in RUN_FILE_PATTERNS):
            os.remove(full)
            removed.append(name)
    return removed


def check_writable(output_dir: str) -> None:
    """Fail before the model loads when ``output_dir`` cannot be created or written (read-only, no permission)."""
    import tempfile

    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".grace-write-test-"):
            pass
    except OSError as err:
        raise RunStateError(f"output_dir {output_dir} is not writable ({err.strerror or err}); choose another "
                            "output_dir") from None


def trim_samples(samples_path: str, step: int) -> int:
    """Drop records of steps ≥ ``step`` (they are about to be redone); returns how many were dropped.

    Written to a temporary file and renamed, so a kill during trimming keeps the old file.
    """
    if not os.path.isfile(samples_path):
        return 0
    kept, dropped = [], 0
    with open(samples_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record_step = json.loads(line)["step"]
            except (json.JSONDecodeError, KeyError, TypeError):
                # a line cut by a kill during the write: it belongs to a step being redone
                dropped += 1
                continue
            if record_step >= step:
                dropped += 1
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        tmp = samples_path + ".trim.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, samples_path)
        logger.info("resume: removed %d rationale sample(s) of steps >= %d from %s", dropped, step, samples_path)
    return dropped


# ------------------------------------------------------------------ texts vs the model's context
def context_length(model_config) -> int | None:
    """Positions the model can attend to, from its config (None when it does not say)."""
    cfg = getattr(model_config, "text_config", None) or model_config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if _is_int(value) and value > 0:
            return int(value)
    return None


def check_text_lengths(rows: Iterable[tuple[int, str, str]], count_tokens, prompt_overhead: int,
                       max_completion_length: int, context: int, max_reported: int = 10) -> None:
    """Fail when a prompt plus ``max_completion_length`` cannot fit the model's context.

    ``rows`` yields ``(row, field, text)``; ``count_tokens`` maps a list of texts to token counts.
    Texts whose UTF-8 size alone fits are not tokenized (no token is shorter than one byte).
    """
    budget = context - max_completion_length - prompt_overhead
    if budget <= 0:
        raise ValueError(f"max_completion_length ({max_completion_length}) plus the prompt template "
                         f"({prompt_overhead} tokens) leaves no room in the model's context of {context} tokens")
    candidates = [(r, f, t) for r, f, t in rows if len(t.encode("utf-8", "surrogatepass")) > budget]
    if not candidates:
        return
    counts = count_tokens([t for _, _, t in candidates])
    too_long = [(r, f, n) for (r, f, _), n in zip(candidates, counts) if n > budget]
    if not too_long:
        return
    shown = "; ".join(f"row {r}, field '{f}': {n} tokens" for r, f, n in too_long[:max_reported])
    more = f" (and {len(too_long) - max_reported} more)" if len(too_long) > max_reported else ""
    raise ValueError(
        f"{len(too_long)} text(s) do not fit the model's context of {context} tokens with the prompt template "
        f"({prompt_overhead}) and max_completion_length ({max_completion_length}); at most {budget} tokens per text: "
        f"{shown}{more}. Shorten or drop these rows, or lower max_completion_length")


# ------------------------------------------------------------------ steps that cannot learn
class StepHealth:
    """Counts generation batches that carry no learning signal and warns about them."""

    def __init__(self, hint_after: int = DEAD_STEP_HINT_AFTER):
        self.hint_after = hint_after
        self.all_truncated = 0
        self.zero_advantage = 0
        self.consecutive = 0

    def update(self, step: int, truncated_fraction: float, max_abs_advantage: float, max_completion_length: int,
               tol: float = 1e-8) -> dict[str, float]:
        """Record one generation batch; returns its metrics (1.0 when it learns nothing)."""
        all_truncated = truncated_fraction >= 1.0
        dead = all_truncated or max_abs_advantage <= tol
        self.all_truncated += int(all_truncated)
        self.zero_advantage += int(dead)
        self.consecutive = self.consecutive + 1 if dead else 0
        if all_truncated:
            logger.warning("step %d: every rollout hit max_completion_length=%d without EOS, so every reward is the "
                           "truncation penalty and no advantage is non-zero: this step learns nothing "
                           "(%d such step(s) so far)", step, max_completion_length, self.all_truncated)
        elif dead:
            logger.warning("step %d: all advantages are zero (every group's rollouts scored the same): this step "
                           "learns nothing (%d such step(s) so far)", step, self.zero_advantage)
        if dead and self.consecutive == self.hint_after:
            logger.warning(
                "%d steps in a row learned nothing. Raise max_completion_length (now %d) or ask for a shorter "
                "rationale in system_prompt/instruction so that rollouts end with EOS; check grace/truncation_rate "
                "and frac_reward_zero_std in the logs", self.consecutive, max_completion_length)
        # 0/1 per batch: TRL averages metrics over the logging interval, so the log shows the fraction
        return {"grace/all_truncated": float(all_truncated), "grace/zero_advantage": float(dead)}


def nonfinite_rows(values) -> list[int]:
    """Indices of rows (first dimension) that hold any NaN/inf."""
    import torch

    t = values if isinstance(values, torch.Tensor) else torch.as_tensor(values)
    if t.ndim == 1:
        bad = ~torch.isfinite(t)
    else:
        bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(-1)
    return bad.nonzero(as_tuple=True)[0].tolist()


__all__ = [
    "StepHealth", "check_fresh_output_dir", "check_number", "check_text_lengths", "checkpoint_problem",
    "context_length", "finite_or_none", "remove_orphaned_temp_files", "resolve_resume_checkpoint", "trim_samples",
    "validate_config_values",
]


# ------------------------------------------------------------------ one run per output_dir
_HELD_LOCKS: dict[str, "OutputDirLock"] = {}


class OutputDirLock:
    """An exclusive lock on ``output_dir`` (``flock`` on ``.grace-trl.lock``) held for a whole run.

    Two runs into one folder would interleave checkpoints and samples and both exit 0. The lock dies with
    its process (a kill -9 frees it), and the file says who holds it, so the refusal can name the holder.
    Re-entrant within a process: the train command and the trainer both take it.
    """

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.key = os.path.realpath(output_dir)
        self._file = None
        self._depth = 0
        self._outer: OutputDirLock | None = None  # the lock this process already holds on the folder

    def acquire(self) -> "OutputDirLock":
        held = _HELD_LOCKS.get(self.key)
        if held is not None:
            held._depth += 1
            self._outer = held
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no flock; runs are not guarded there
            return self
        import socket
        import sys
        import time

        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, LOCK_FILE)
        f = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = " ".join(f.read().split()) or "another process"
            f.close()
            raise RunStateError(f"output_dir {self.output_dir} is in use by another run ({holder}); wait for it to "
                                "finish or choose another output_dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                f"{' '.join(sys.argv)[:200]}\n")
        f.flush()
        self._file, self._depth = f, 1
        _HELD_LOCKS[self.key] = self
        return self

    def release(self) -> None:
        if self._outer is not None:
            outer, self._outer = self._outer, None
            outer.release()
            return
        self._depth -= 1
        if self._depth > 0 or self._file is None:
            return
        _HELD_LOCKS.pop(self.key, None)
        self._file.close()  # closing the descriptor releases the flock
        self._file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
