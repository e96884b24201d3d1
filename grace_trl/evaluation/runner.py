"""Several models/settings side by side on offline MTEB tasks: the library behind ``grace-trl eval``.

:func:`run_evaluation` embeds every planned run (:func:`plan_runs`) through mteb and returns the
results that :mod:`grace_trl.evaluation.report` writes; the command line lives in
:mod:`grace_trl.commands.eval`.

Embeddings are cached with mteb's ``CachedEmbeddingWrapper`` (``OUT/embedding_cache``), rationales in
``OUT/rationale_cache``.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .tasks import LOCAL_TASKS, TASK_ALIASES, get_local_task

logger = logging.getLogger(__name__)


@dataclass
class ModelRun:
    label: str
    path: str
    kind: str  # "grace" (causal LM through GRACEEncoder) or "sentence-transformers"
    use_rationale: bool = True
    settings: dict = field(default_factory=dict)
    base_label: str | None = None  # the --model label, shared by its with/without-rationale runs


def is_sentence_transformer(path: str) -> bool:
    """A plain sentence-transformers folder (the CL baseline). A GRACE checkpoint also has ``modules.json`` (its
    no-rationale module) but is recognised by ``grace_config.json`` and evaluated through ``GRACEEncoder``."""
    return (os.path.isfile(os.path.join(path, "modules.json"))
            and not os.path.isfile(os.path.join(path, "grace_config.json")))


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``LABEL=PATH`` or ``PATH`` (label = last path component / alias)."""
    if "=" in spec:
        label, path = spec.split("=", 1)
        if not label or not path:
            raise ValueError(f"--model {spec!r}: expected LABEL=PATH")
        return label, path
    return os.path.basename(os.path.normpath(spec)) or spec, spec


def plan_runs(specs: list[str], no_rationale: bool, both: bool) -> list[ModelRun]:
    runs = []
    for spec in specs:
        label, path = parse_model_spec(spec)
        if os.path.isdir(path) and is_sentence_transformer(path):
            runs.append(ModelRun(label, path, "sentence-transformers", use_rationale=False,
                                 settings={"pooling": "sentence-transformers (mean)"}))
        elif both:
            runs.append(ModelRun(f"{label} (no rationale)", path, "grace", use_rationale=False, base_label=label))
            runs.append(ModelRun(f"{label} (rationale)", path, "grace", use_rationale=True, base_label=label))
        else:
            runs.append(ModelRun(label, path, "grace", use_rationale=not no_rationale))
    labels = [r.label for r in runs]
    dupes = {x for x in labels if labels.count(x) > 1}
    if dupes:
        raise ValueError(f"duplicate model labels {sorted(dupes)}; give each --model a LABEL=PATH")
    return runs


def canonical_tasks(spec: str) -> list[str]:
    """Bundled offline tasks (by name or short alias) and any other task mteb knows (data from the Hub)."""
    import mteb

    names = []
    for raw in [s.strip() for s in spec.split(",") if s.strip()]:
        name = TASK_ALIASES.get(raw.lower(), raw)
        if name not in LOCAL_TASKS:
            try:
                mteb.get_task(name)
            except KeyError:
                raise ValueError(f"--tasks: unknown task {raw!r}; offline: {sorted(LOCAL_TASKS)}, or any mteb task "
                                 "name (its data comes from the Hub)") from None
        names.append(name)
    if not names:
        raise ValueError("--tasks is empty")
    return names


def make_task(name: str, args):
    """A bundled task reading ``--data-dir``, else mteb's own task (``--limit`` does not apply there)."""
    import mteb

    if name in LOCAL_TASKS:
        return get_local_task(name, **_task_kwargs(args))
    if args.limit:
        raise ValueError(f"--limit applies to the bundled offline tasks only, not to {name!r}")
    return mteb.get_task(name)


def check_task_data(task_names: list[str], args) -> None:
    """Load every task's data once before any model loads: a wrong --data-dir fails in seconds, not after."""
    for name in task_names:
        make_task(name, args).load_data()


def resolve_system_prompt(args) -> tuple[bool, str | None]:
    """(override?, prompt) from --system-prompt / --system-prompt-from."""
    if args.system_prompt is not None:
        from ..prompts import normalize_system_prompt

        return True, normalize_system_prompt(args.system_prompt)
    if args.system_prompt_from is not None:
        from ..settings import GRACESettings

        settings = GRACESettings.load(args.system_prompt_from) if os.path.isdir(args.system_prompt_from) else None
        if settings is None:
            raise ValueError(f"--system-prompt-from {args.system_prompt_from!r}: no grace_config.json in that folder "
                             "(expected a checkpoint written by GRACETrainer)")
        return True, settings.system_prompt
    return False, None


def _task_kwargs(args) -> dict:
    return {"data_dir": args.data_dir, "limit": args.limit, "seed": args.seed,
            "n_distractors": args.scifact_distractors, "n_experiments": args.n_experiments,
            "samples_per_label": args.samples_per_label}


def run_evaluation(args) -> dict:
    import mteb

    from ..encoder import GRACEEncoder
    from .mteb_wrapper import GRACEMTEBEncoder, with_embedding_cache

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    task_names = canonical_tasks(args.tasks)
    override_prompt, system_prompt = resolve_system_prompt(args)
    runs = plan_runs(args.model, args.no_rationale, args.with_and_without_rationale)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache_dir or str(out / "rationale_cache")
    embedding_cache_dir = args.embedding_cache_dir or str(out / "embedding_cache")
    result_cache = mteb.ResultCache(out / "mteb")
    encode_kwargs = {"batch_size": args.batch_size, "show_progress_bar": True}

    tasks_info: dict[str, dict] = {}
    models_info, samples, generation = [], {}, {}
    loaded: dict[str, object] = {}
    checked_paths: set[str] = set()
    for run in runs:
        logger.info("evaluating %s", run.label)
        task_objs = [make_task(n, args) for n in task_names]
        if run.kind == "sentence-transformers":
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(run.path, device=args.device)
            evaluated = model
            run.settings.update({"limit": args.limit})
        else:
            if run.path not in loaded:
                loaded.clear()
                gc.collect()
                loaded[run.path] = GRACEEncoder.from_pretrained(run.path, device=args.device, backend=args.backend,
                                                                cache_dir=cache_dir)
            encoder = loaded[run.path]
            experiment = {"limit": args.limit} if args.limit else {}
            prompt_kwargs = {}
            if override_prompt:
                # passed to encode(), never written into encoder.settings; part of the cache key via the prompt ids
                prompt_kwargs["system_prompt"] = system_prompt
                # keeps mteb's result folders apart from runs with the checkpoint's prompt
                experiment["system_prompt"] = hashlib.sha256((system_prompt or "").encode()).hexdigest()[:10]
            grace_model = GRACEMTEBEncoder(encoder, use_rationale=run.use_rationale,
                                           max_new_tokens=args.max_new_tokens, name=run.path,
                                           experiment_kwargs=experiment, **prompt_kwargs)
            evaluated = grace_model if args.no_embedding_cache else with_embedding_cache(grace_model,
                                                                                          embedding_cache_dir)
            used_prompt = system_prompt if override_prompt else encoder.settings.system_prompt
            run.settings.update({"rationale": run.use_rationale, "pooling": encoder.settings.pooling,
                                 "system_prompt": ("override" if override_prompt else "checkpoint")
                                 if used_prompt else None})
            if run.use_rationale:
                run.settings["max_new_tokens"] = grace_model.max_new_tokens
        predictions = out / "predictions" / hashlib.sha256(run.label.encode()).hexdigest()[:12]
        # one progress bar per encode call (the encoder's); mteb's task bar around it would nest bars
        result = mteb.evaluate(evaluated, task_objs, cache=result_cache, overwrite_strategy="always",
                               encode_kwargs=dict(encode_kwargs), prediction_folder=predictions,
                               show_progress_bar=False)
        for task, tr in zip(task_objs, result.task_results):
            info = tasks_info.setdefault(tr.task_name, {
                "name": tr.task_name, "type": task.metadata.type, "main_score": task.metadata.main_score,
                "reduced": getattr(task, "reduced", False), "reduction": getattr(task, "reduction", {}),
                "scores": {}, "n": None, "unit": None, "intervals": {}})
            info["scores"][run.label] = float(tr.get_score())
            interval = score_interval(task, predictions / task.prediction_file_name, seed=args.seed)
            if interval is not None:
                info.update(n=interval.n, unit=interval.unit)
                info["intervals"][run.label] = {
                    key: (None if math.isnan(v) else v) for key, v in
                    (("score", interval.score), ("low", interval.low), ("high", interval.high))}
        models_info.append({"label": run.label, "path": run.path, "kind": run.kind, "settings": run.settings})
        if run.kind == "grace" and run.use_rationale and args.samples > 0 and "STSBenchmark" in task_names:
            samples[run.label] = sts_samples(loaded[run.path], args, grace_model.max_new_tokens, **prompt_kwargs)
        if args.generation_check and run.path not in checked_paths:
            checked_paths.add(run.path)
            # the first model checked (put the base model first) is the reference for regressions
            reference = next(iter(generation.values()), None)
            generation[run.base_label or run.label] = _generation_check(run, loaded.get(run.path), args, reference)
        scores = ", ".join(f"{n}={tasks_info[n]['scores'][run.label]:.4f}" for n in task_names)
        print(f"[{run.label}] {scores}", flush=True)
    results = {
        "models": models_info,
        "tasks": [tasks_info[n] for n in task_names],
        "limit": args.limit,
        "seed": args.seed,
        "system_prompt_override": system_prompt if override_prompt else None,
        "leaderboard_comparable": args.limit is None,
        "samples": samples,
        "generation_check": generation,
        "mteb_results_dir": str(out / "mteb" / "results"),
    }
    return results


def score_interval(task, prediction_file: Path, n_resamples: int = 2000, seed: int = 42):
    """n and a 95% bootstrap interval of the task's main score, from the predictions mteb saved.

    STS: Spearman over resampled pairs; retrieval: mean nDCG@k over resampled queries (per query by mteb's
    own scorer); classification: accuracy over resampled test examples, averaged over mteb's experiments (the
    classifiers' training samples stay fixed). Returns None for other tasks, other main scores, and tasks
    with several subsets or splits, whose main score is an average over them.
    """
    import json

    from .stats import mean_interval, spearman_interval

    predictions = json.loads(prediction_file.read_text(encoding="utf-8"))
    parts = [(subset, split) for subset, splits in predictions.items() if subset != "mteb_model_meta"
             for split in splits]
    if len(parts) != 1:
        return None
    subset, split = parts[0]
    pred = predictions[subset][split]
    if not task.data_loaded:
        task.load_data()
    data = task.dataset[split] if subset == "default" and subset not in task.dataset else task.dataset[subset][split]
    kind, main = task.metadata.type, task.metadata.main_score
    if kind == "STS" and main == "cosine_spearman":
        return spearman_interval(pred["cosine_scores"], data["score"], n_resamples=n_resamples, seed=seed)
    if kind == "Retrieval" and main.startswith("ndcg_at_"):
        from mteb._evaluators.retrieval_metrics import calculate_retrieval_scores

        k = int(main.removeprefix("ndcg_at_"))
        per_query = calculate_retrieval_scores(pred, data["relevant_docs"], [k]).all_scores
        return mean_interval([q[f"ndcg_cut_{k}"] for q in per_query.values()], "queries", n_resamples, seed)
    if kind == "Classification" and main == "accuracy" and isinstance(pred, list) and pred:
        import numpy as np

        gold = np.asarray(data[task.label_column_name])
        if any(len(p) != len(gold) for p in pred):  # cross-validated folds: not one prediction per test example
            return None
        correct = np.mean([np.asarray(p) == gold for p in pred], axis=0)  # per example, over experiments
        return mean_interval(correct, "examples", n_resamples, seed)
    return None


def sts_samples(encoder, args, max_new_tokens: int, **prompt_kwargs) -> list[dict]:
    """A few STS pairs with both rationales and their cosine (rationales come from the cache).

    ``prompt_kwargs`` (``system_prompt``) go to ``encode``, as for the scored embeddings."""
    import numpy as np

    task = get_local_task("STSBenchmark", data_dir=args.data_dir, limit=args.limit, seed=args.seed)
    task.load_data()
    rows = task.dataset["test"].select(range(min(args.samples, len(task.dataset["test"]))))
    texts = list(rows["sentence1"]) + list(rows["sentence2"])
    vecs, rats = encoder.encode(texts, batch_size=args.batch_size, max_new_tokens=max_new_tokens,
                                return_rationales=True, show_progress_bar=False, **prompt_kwargs)
    n = len(rows)
    cos = np.sum(vecs[:n] * vecs[n:], axis=1)
    return [{"text1": rows["sentence1"][i], "text2": rows["sentence2"][i], "gold": float(rows["score"][i]),
             "cosine": float(cos[i]), "rationale1": rats[i].text, "rationale2": rats[n + i].text,
             "truncated": [rats[i].truncated, rats[n + i].truncated]} for i in range(n)]


def _generation_check(run: ModelRun, encoder, args, reference: dict | None = None) -> dict:
    """The first model checked is the reference (cached per weights, shared with the trainer and benchmarks)."""
    from .generation_check import generation_check, generation_kept, reference_generation_check

    note = None
    if encoder is not None:
        model, tok = encoder.model, encoder.tokenizer
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # A sentence-transformers folder saved from a causal LM holds the backbone; tied-embedding models
        # (SmolLM2) regain their LM head on load, others get a freshly initialised one (reported as such).
        tok = AutoTokenizer.from_pretrained(run.path)
        model = AutoModelForCausalLM.from_pretrained(run.path)
        note = "loaded from the sentence-transformers backbone"
    if reference is None:
        res = dict(reference_generation_check(model, tok))
    else:
        res = generation_check(model, tok, reference=reference)
    if note:
        res["note"] = note
    if reference is not None:
        res["kept"] = generation_kept(res)
    return res
