"""Embedding evaluators that run *during* training, on dev data only.

An evaluator takes a :class:`~grace_trl.encoder.GRACEEncoder` wrapping the current policy and
returns ``{metric: value}``; :class:`~grace_trl.GRACETrainer` calls it at ``eval_steps`` and logs
the values as ``eval_<name>_<metric>`` so ``metric_for_best_model`` and the training curves see them.
They embed exactly as ``GRACEEncoder.encode`` does (greedy rationale, the trainer's pooling), so a
curve is a preview of what ``grace-trl eval`` will report.

Select recipes on these dev splits (STS-B ``dev``, SciFact ``train`` qrels); keep test splits for the
final report.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

EVALUATOR_NAMES = ("sts-dev", "sts-dev-sample", "retrieval-dev")
# 200 STS-B dev pairs committed with the package (image captions and SNLI genres, CC BY-SA; see data/PROVENANCE.md)
STS_DEV_SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                              "sts_dev_sample.tsv")


def _seeded_subset(n_total: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= n_total:
        return list(range(n_total))
    if limit <= 0:
        raise ValueError(f"limit must be a positive number of items, got {limit}")
    return sorted(np.random.RandomState(seed).choice(n_total, size=limit, replace=False).tolist())


def _rationale_stats(rationales) -> dict[str, float]:
    if not rationales:
        return {}
    return {
        "rationale_length": float(np.mean([len(r.token_ids) for r in rationales])),
        "truncation_rate": float(np.mean([bool(r.truncated) for r in rationales])),
    }


@dataclass
class STSEvaluator:
    """Spearman ×100 between cosine similarity and the gold score of sentence pairs.

    ``with_rationale`` / ``without_rationale`` choose which embeddings are scored; the first one
    enabled gives ``spearman``, the no-rationale score is also logged as ``spearman_no_rationale``.
    """

    pairs: list[tuple[str, str, float]]
    name: str = "sts"
    max_new_tokens: int | None = None
    batch_size: int = 16
    with_rationale: bool = True
    without_rationale: bool = False
    show_progress_bar: bool = False
    dataset: str = "sentence pairs"  # what the pairs are and which split: the model card names both
    split: str = "dev"

    def __post_init__(self):
        if not self.pairs:
            raise ValueError(f"{self.name}: no sentence pairs to evaluate")
        if not (self.with_rationale or self.without_rationale):
            raise ValueError(f"{self.name}: enable with_rationale or without_rationale")
        for i, pair in enumerate(self.pairs):
            if len(pair) != 3 or not isinstance(pair[0], str) or not isinstance(pair[1], str):
                raise ValueError(f"{self.name}: pair {i} must be (sentence1, sentence2, score), got {pair!r}")

    @classmethod
    def from_sample(cls, limit: int | None = None, seed: int = 0, **kwargs) -> "STSEvaluator":
        """The 200 STS-B dev pairs shipped with the package: a dev score on a machine without benchmark data."""
        from .loaders import read_sts_file

        pairs = read_sts_file(STS_DEV_SAMPLE)
        pairs = [pairs[i] for i in _seeded_subset(len(pairs), limit, seed)]
        kwargs.setdefault("name", "sts")
        kwargs.setdefault("dataset", "STS-B dev sample shipped with grace_trl")
        return cls(pairs=pairs, **kwargs)

    @classmethod
    def from_sts_benchmark(cls, data_dir=None, split: str = "dev", limit: int | None = 200, seed: int = 0,
                           **kwargs) -> "STSEvaluator":
        from .loaders import load_sts_benchmark

        if split == "test":
            logger.warning("STSEvaluator on the STS-B *test* split: select recipes on 'dev' and keep test for the "
                           "final report")
        pairs = load_sts_benchmark(data_dir, split=split)
        pairs = [pairs[i] for i in _seeded_subset(len(pairs), limit, seed)]
        kwargs.setdefault("name", "sts")
        kwargs.setdefault("dataset", "STSBenchmark")
        kwargs.setdefault("split", split)
        return cls(pairs=pairs, **kwargs)

    def describe(self) -> dict:
        """What a score of this evaluator was computed on (dataset, split, sample size), for the model card."""
        return {"dataset": self.dataset, "split": self.split, "n": len(self.pairs), "unit": "pairs",
                "task_type": "sentence-similarity", "metric": "cosine_spearman"}

    def rationale_texts(self) -> int:
        """How many texts an evaluation writes a rationale for (each distinct sentence once)."""
        return len({s for a, b, _ in self.pairs for s in (a, b)}) if self.with_rationale else 0

    def __call__(self, encoder) -> dict[str, float]:
        from scipy.stats import spearmanr

        sentences = sorted({s for a, b, _ in self.pairs for s in (a, b)})
        index = {s: i for i, s in enumerate(sentences)}
        gold = np.array([score for _, _, score in self.pairs], dtype=np.float64)
        left = [index[a] for a, _, _ in self.pairs]
        right = [index[b] for _, b, _ in self.pairs]
        metrics: dict[str, float] = {"pairs": float(len(self.pairs))}
        for use_rationale in (True, False):
            if (use_rationale and not self.with_rationale) or (not use_rationale and not self.without_rationale):
                continue
            out = encoder.encode(sentences, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                                 use_rationale=use_rationale, return_rationales=use_rationale,
                                 show_progress_bar=self.show_progress_bar)
            vectors, rationales = out if use_rationale else (out, [])
            cos = np.sum(vectors[left] * vectors[right], axis=1)
            rho = 100.0 * float(spearmanr(cos, gold).statistic)
            if use_rationale:
                metrics["spearman"] = rho
                metrics.update(_rationale_stats(rationales))
            else:
                metrics["spearman_no_rationale" if self.with_rationale else "spearman"] = rho
        return metrics


@dataclass
class RetrievalEvaluator:
    """nDCG@10 ×100 of query → document retrieval by cosine similarity (queries and documents embedded alike)."""

    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str = "retrieval"
    max_new_tokens: int | None = None
    batch_size: int = 16
    k: int = 10
    show_progress_bar: bool = False
    info: dict = field(default_factory=dict)
    dataset: str = "queries"
    split: str = "train"

    def __post_init__(self):
        if not self.queries or not self.corpus:
            raise ValueError(f"{self.name}: needs at least one query and one document")
        unknown = sorted(q for q in self.qrels if q not in self.queries)
        if unknown:
            raise ValueError(f"{self.name}: qrels name queries that are not given: {unknown[:5]}")
        missing = sorted({d for rel in self.qrels.values() for d in rel if d not in self.corpus})
        if missing:
            raise ValueError(f"{self.name}: qrels name documents that are not in the corpus: {missing[:5]}")

    @classmethod
    def from_scifact(cls, data_dir=None, split: str = "train", limit: int | None = 50,
                     n_distractors: int | None = None, seed: int = 0, **kwargs) -> "RetrievalEvaluator":
        """SciFact queries of ``split`` (default ``train``: SciFact has no dev split) with their documents."""
        from .loaders import load_scifact, reduce_retrieval

        data = load_scifact(data_dir, split=split)
        if limit is not None:
            data = reduce_retrieval(data, limit, n_distractors, seed=seed)
        corpus = {d: (v["title"] + " " + v["text"]).strip() for d, v in data.corpus.items()}
        kwargs.setdefault("name", "retrieval")
        kwargs.setdefault("dataset", "SciFact")
        kwargs.setdefault("split", split)
        return cls(queries=dict(data.queries), corpus=corpus, qrels=dict(data.qrels), info=dict(data.info), **kwargs)

    def describe(self) -> dict:
        """What a score of this evaluator was computed on (dataset, split, sample size), for the model card."""
        return {"dataset": self.dataset, "split": self.split, "n": len(self.queries), "unit": "queries",
                "task_type": "text-retrieval", "metric": f"ndcg_at_{self.k}"}

    def rationale_texts(self) -> int:
        """How many texts an evaluation writes a rationale for (queries, then documents)."""
        return len(self.queries) + len(self.corpus)

    def __call__(self, encoder) -> dict[str, float]:
        import pytrec_eval

        qids, dids = sorted(self.queries), sorted(self.corpus)
        q_vec, q_rat = encoder.encode([self.queries[q] for q in qids], batch_size=self.batch_size,
                                      max_new_tokens=self.max_new_tokens, return_rationales=True,
                                      show_progress_bar=self.show_progress_bar)
        d_vec, d_rat = encoder.encode([self.corpus[d] for d in dids], batch_size=self.batch_size,
                                      max_new_tokens=self.max_new_tokens, return_rationales=True,
                                      show_progress_bar=self.show_progress_bar)
        scores = q_vec @ d_vec.T
        run = {}
        for i, q in enumerate(qids):
            top = np.argsort(-scores[i])[: max(self.k, 100)]
            run[q] = {dids[j]: float(scores[i, j]) for j in top}
        metric = f"ndcg_cut_{self.k}"
        evaluator = pytrec_eval.RelevanceEvaluator({q: self.qrels.get(q, {}) for q in qids}, {metric})
        per_query = evaluator.evaluate(run)
        metrics = {f"ndcg_at_{self.k}": 100.0 * float(np.mean([v[metric] for v in per_query.values()])),
                   "queries": float(len(qids))}
        metrics.update(_rationale_stats(list(q_rat) + list(d_rat)))
        return metrics


def build_evaluator(spec: str, data_dir: str | os.PathLike | None = None, limit: int | None = None,
                    seed: int = 0, max_new_tokens: int | None = None, batch_size: int = 64,
                    without_rationale: bool = False):
    """The evaluator a config names.

    ``sts-dev``: seeded STS-B dev pairs from the data folder; ``sts-dev-sample``: the 200 dev pairs shipped
    with the package; ``retrieval-dev``: SciFact train queries. ``batch_size`` rationales are decoded
    together (on CPU, 64 rows decode about 4x faster per text than 16).
    """
    if spec == "sts-dev-sample":
        return STSEvaluator.from_sample(limit=limit, seed=seed, max_new_tokens=max_new_tokens,
                                        batch_size=batch_size, without_rationale=without_rationale)
    if spec == "sts-dev":
        return STSEvaluator.from_sts_benchmark(data_dir, split="dev", limit=limit or 200, seed=seed,
                                               max_new_tokens=max_new_tokens, batch_size=batch_size,
                                               without_rationale=without_rationale)
    if spec == "retrieval-dev":
        return RetrievalEvaluator.from_scifact(data_dir, split="train", limit=limit or 50, seed=seed,
                                               max_new_tokens=max_new_tokens, batch_size=batch_size)
    raise ValueError(f"embedding_evaluator must be one of {EVALUATOR_NAMES}, got {spec!r}")
