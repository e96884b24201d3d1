"""Offline copies of three MTEB tasks, loaded from local files.

Each class subclasses mteb's own task class, so metadata (name, main score, splits) and the
evaluation protocol (evaluators, metrics, classifier) are mteb's; only ``load_data`` differs: it
reads the files under a data directory instead of the Hugging Face Hub.

``limit`` subsamples deterministically with ``seed`` and marks the task as *reduced*; reduced
scores are not comparable with the MTEB leaderboard and every report says so.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict
from mteb.tasks.classification.eng.banking77_classification import Banking77Classification
from mteb.tasks.retrieval.eng.sci_fact_retrieval import SciFact
from mteb.tasks.sts.eng.sts_benchmark_sts import STSBenchmarkSTS

DATA_ENV = "GRACE_TRL_DATA_DIR"


def default_data_dir() -> Path:
    """``$GRACE_TRL_DATA_DIR``, else ``../shared/data`` next to the repository checkout."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{what} not found at {path}; pass data_dir=/--data-dir or set {DATA_ENV} to the folder holding it"
        )
    return path


# ---------------------------------------------------------------------------------------- loaders
def load_sts_benchmark(data_dir: str | os.PathLike | None = None, split: str = "test") -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score 0-5) from the original tab-separated STSbenchmark release.

    Rows may carry extra trailing columns, and sentences contain unbalanced quotes, so the file is
    read without quote handling and only columns 4-6 are used.
    """
    root = Path(data_dir) if data_dir else default_data_dir()
    return read_sts_file(_require(root / "STSBenchmark" / f"sts-{split}.csv", "STSBenchmark"))


def read_sts_file(path: str | os.PathLike) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score) rows of one STSbenchmark-format file (see :func:`load_sts_benchmark`)."""
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if len(row) < 7:
                raise ValueError(f"{path}:{n}: expected at least 7 tab-separated columns, got {len(row)}")
            try:
                score = float(row[4])
            except ValueError as err:
                raise ValueError(f"{path}:{n}: column 5 (score) must be a number, got {row[4]!r}") from err
            if not 0.0 <= score <= 5.0:
                raise ValueError(f"{path}:{n}: score must be in [0, 5], got {score}")
            rows.append((row[5], row[6], score))
    return rows


@dataclass
class RetrievalData:
    corpus: dict[str, dict[str, str]]  # doc id -> {"title", "text"}
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}
    reduced: bool = False
    info: dict = field(default_factory=dict)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not valid JSON ({err})") from err
    return rows


def load_scifact(data_dir: str | os.PathLike | None = None, split: str = "test") -> RetrievalData:
    """BEIR-format SciFact: every document, the queries that have qrels in ``split``, the qrels."""
    root = _require(Path(data_dir) if data_dir else default_data_dir(), "data directory") / "SciFact"
    corpus = {}
    for n, row in enumerate(_read_jsonl(_require(root / "corpus.jsonl", "SciFact corpus")), start=1):
        if "_id" not in row or "text" not in row:
            raise ValueError(f"{root / 'corpus.jsonl'}: row {n} needs '_id' and 'text', has {sorted(row)}")
        corpus[str(row["_id"])] = {"title": row.get("title") or "", "text": row["text"]}
    qrels: dict[str, dict[str, int]] = {}
    qrels_path = _require(root / "qrels" / f"{split}.tsv", f"SciFact qrels/{split}.tsv")
    with qrels_path.open(encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        if [h.strip() for h in header[:3]] != ["query-id", "corpus-id", "score"]:
            raise ValueError(f"{qrels_path}: header must be 'query-id corpus-id score', got {header}")
        for n, row in enumerate(reader, start=2):
            if len(row) < 3:
                raise ValueError(f"{qrels_path}:{n}: expected 3 columns, got {row}")
            if row[1] not in corpus:
                raise ValueError(f"{qrels_path}:{n}: corpus-id {row[1]!r} is not in corpus.jsonl")
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    queries = {}
    for n, row in enumerate(_read_jsonl(_require(root / "queries.jsonl", "SciFact queries")), start=1):
        if "_id" not in row or "text" not in row:
            raise ValueError(f"{root / 'queries.jsonl'}: row {n} needs '_id' and 'text', has {sorted(row)}")
        if str(row["_id"]) in qrels:
            queries[str(row["_id"])] = row["text"]
    missing = set(qrels) - set(queries)
    if missing:
        raise ValueError(f"{qrels_path}: query ids {sorted(missing)[:5]} have no row in queries.jsonl")
    return RetrievalData(corpus, queries, qrels)


def reduce_retrieval(data: RetrievalData, limit: int, n_distractors: int | None = None,
                     seed: int = 42) -> RetrievalData:
    """``limit`` seeded queries, all of their relevant documents and ``n_distractors`` other documents."""
    rng = np.random.RandomState(seed)
    qids = sorted(data.queries)
    if limit < len(qids):
        qids = sorted(rng.choice(qids, size=limit, replace=False).tolist())
    relevant = sorted({d for q in qids for d in data.qrels[q]})
    others = sorted(set(data.corpus) - set(relevant))
    n_distractors = 2 * limit if n_distractors is None else n_distractors
    distractors = sorted(rng.choice(others, size=min(n_distractors, len(others)), replace=False).tolist())
    keep = relevant + distractors
    return RetrievalData(
        corpus={d: data.corpus[d] for d in keep},
        queries={q: data.queries[q] for q in qids},
        qrels={q: data.qrels[q] for q in qids},
        reduced=True,
        info={"queries": len(qids), "relevant_docs": len(relevant), "distractors": len(distractors),
              "full_corpus": len(data.corpus), "full_queries": len(data.queries)},
    )


def load_banking77(data_dir: str | os.PathLike | None = None) -> dict[str, list[tuple[str, int]]]:
    """{"train": [(text, label id)], "test": [...]}; label ids follow ``categories.json`` order."""
    root = _require(Path(data_dir) if data_dir else default_data_dir(), "data directory") / "Banking77Classification"
    with _require(root / "categories.json", "Banking77 categories.json").open(encoding="utf-8") as f:
        categories = json.load(f)
    label_of = {c: i for i, c in enumerate(categories)}
    out = {}
    for split in ("train", "test"):
        path = _require(root / f"{split}.csv", f"Banking77 {split}.csv")
        rows = []
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"text", "category"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: header must contain 'text,category', got {reader.fieldnames}")
            for n, row in enumerate(reader, start=2):
                if row["category"] not in label_of:
                    raise ValueError(f"{path}:{n}: category {row['category']!r} is not in categories.json")
                rows.append((row["text"], label_of[row["category"]]))
        out[split] = rows
    return out


def _sample(n_total: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= n_total:
        return list(range(n_total))
    return sorted(np.random.RandomState(seed).choice(n_total, size=limit, replace=False).tolist())


# ------------------------------------------------------------------------------------------ tasks
MIN_LIMIT = 3  # Spearman, nDCG means and their bootstrap intervals need at least three items


class _LocalMixin:
    """Shared constructor: where the data is and how it is reduced.

    A reduced task reports a dataset revision of its own (the official one + ``+reduced:`` and the reduction
    settings). mteb files that revision in every result and reuses a cached result only when the revision
    matches, so a reduced score is never read back as the full task's, nor as another reduction's.
    """

    def __init__(self, data_dir: str | os.PathLike | None = None, limit: int | None = None, seed: int = 42, **kwargs):
        if limit is not None and limit < MIN_LIMIT:
            raise ValueError(f"limit must be >= {MIN_LIMIT} (a score and its 95% interval need {MIN_LIMIT} items), "
                             f"got {limit}")
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.limit = limit
        self.reduction: dict = {}
        super().__init__(seed=seed, **kwargs)

    def reduction_settings(self) -> dict:
        """What makes this task a subset of the official one, known before the data loads (empty: the full task)."""
        return {"limit": self.limit, "seed": self.seed} if self.limit is not None else {}

    @property
    def reduced(self) -> bool:
        return bool(self.reduction_settings())

    @property
    def metadata(self):
        official = super().metadata
        settings = self.reduction_settings()
        if not settings:
            return official
        revision = f"{official.revision}+reduced:" + ",".join(f"{k}={v}" for k, v in sorted(settings.items()))
        if getattr(self, "_reduced_metadata", None) is None or self._reduced_metadata.revision != revision:
            self._reduced_metadata = official.model_copy(update={"dataset": {**official.dataset,
                                                                             "revision": revision}})
        return self._reduced_metadata

    def _finish_load(self) -> None:
        self.dataset_transform()
        self.data_loaded = True


class LocalSTSBenchmark(_LocalMixin, STSBenchmarkSTS):
    """MTEB STSBenchmark (test, 1,379 pairs; main score: Spearman of cosine) from ``STSBenchmark/``."""

    def load_data(self, num_proc=None, **kwargs) -> None:
        if self.data_loaded:
            return
        rows = load_sts_benchmark(self.data_dir, "test")
        idx = _sample(len(rows), self.limit, self.seed)
        if self.reduced:
            self.reduction = {"pairs": len(idx), "full_pairs": len(rows), "seed": self.seed}
        rows = [rows[i] for i in idx]
        self.dataset = DatasetDict({"test": Dataset.from_dict({
            "sentence1": [r[0] for r in rows], "sentence2": [r[1] for r in rows], "score": [r[2] for r in rows]})})
        self._finish_load()


class LocalSciFact(_LocalMixin, SciFact):
    """MTEB SciFact (5,183 docs, 300 test queries, 339 qrels; nDCG@10) from BEIR files in ``SciFact/``.

    With ``limit``: that many seeded queries, all their relevant documents and ``n_distractors``
    (default ``2 * limit``) random other documents — a reduced corpus, not leaderboard-comparable.
    """

    def __init__(self, *args, n_distractors: int | None = None, **kwargs):
        self.n_distractors = n_distractors
        super().__init__(*args, **kwargs)

    def reduction_settings(self) -> dict:
        settings = super().reduction_settings()
        if settings:
            settings["distractors"] = 2 * self.limit if self.n_distractors is None else self.n_distractors
        return settings

    def load_data(self, num_proc=None, **kwargs) -> None:
        if self.data_loaded:
            return
        data = load_scifact(self.data_dir, "test")
        if self.limit is not None:
            data = reduce_retrieval(data, self.limit, self.n_distractors, self.seed)
            self.reduction = {**data.info, "seed": self.seed}
        doc_ids = list(data.corpus)
        corpus = Dataset.from_dict({"id": doc_ids, "title": [data.corpus[d]["title"] for d in doc_ids],
                                    "text": [data.corpus[d]["text"] for d in doc_ids]})
        qids = list(data.queries)
        queries = Dataset.from_dict({"id": qids, "text": [data.queries[q] for q in qids]})
        self.dataset = {"default": {"test": {"corpus": corpus, "queries": queries, "relevant_docs": data.qrels,
                                             "top_ranked": None}}}
        self._finish_load()


class LocalBanking77Classification(_LocalMixin, Banking77Classification):
    """MTEB Banking77Classification (test 3,080; accuracy of mteb's logistic-regression protocol).

    mteb's protocol trains on ``samples_per_label`` (8) seeded train examples per label, repeated
    ``n_experiments`` (10) times. With ``limit`` the test set is a seeded sample of that size and,
    unless given, ``n_experiments`` drops to 1 so that a CPU run encodes 616 rather than ~6,000
    training texts.
    """

    def __init__(self, *args, n_experiments: int | None = None, samples_per_label: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if samples_per_label is not None:
            self.samples_per_label = samples_per_label
        if n_experiments is not None:
            self.n_experiments = n_experiments
        elif self.limit is not None:
            self.n_experiments = 1

    def reduction_settings(self) -> dict:
        settings = super().reduction_settings()
        if (self.n_experiments != Banking77Classification.n_experiments
                or self.samples_per_label != Banking77Classification.samples_per_label):
            settings.update(n_experiments=self.n_experiments, samples_per_label=self.samples_per_label,
                            seed=self.seed)
        return settings

    def load_data(self, num_proc=None, **kwargs) -> None:
        if self.data_loaded:
            return
        data = load_banking77(self.data_dir)
        test = data["test"]
        idx = _sample(len(test), self.limit, self.seed)
        if self.reduced:
            self.reduction = {"test": len(idx), "full_test": len(test), "n_experiments": self.n_experiments,
                              "samples_per_label": self.samples_per_label, "seed": self.seed}
        test = [test[i] for i in idx]
        self.dataset = DatasetDict({
            split: Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]})
            for split, rows in (("train", data["train"]), ("test", test))
        })
        self._finish_load()


def _check_cached_revisions() -> None:
    """Make mteb re-run a local task whose cached result has another dataset revision (another reduction).

    mteb 2.26 compares a cached result's dataset revision with the task's only when some split or subset is
    missing (``mteb.evaluate._requires_merge``); otherwise it returns the cached scores as they are, so a
    ``limit=6`` run would read back a ``limit=4`` score. For the tasks of this module a revision mismatch counts
    as needing a merge, which compares revisions and, as they differ, evaluates again.
    """
    import importlib

    module = importlib.import_module("mteb.evaluate")
    original = module._requires_merge
    if getattr(original, "grace_trl_checks_revision", False):
        return

    def requires_merge(task, existing_results) -> bool:
        if isinstance(task, _LocalMixin) and existing_results.dataset_revision != task.metadata.revision:
            return True
        return original(task, existing_results)

    requires_merge.grace_trl_checks_revision = True
    module._requires_merge = requires_merge


_check_cached_revisions()

LOCAL_TASKS = {
    "STSBenchmark": LocalSTSBenchmark,
    "SciFact": LocalSciFact,
    "Banking77Classification": LocalBanking77Classification,
}
TASK_ALIASES = {"banking77": "Banking77Classification", "stsb": "STSBenchmark", "stsbenchmark": "STSBenchmark",
                "scifact": "SciFact", "banking77classification": "Banking77Classification"}


def get_local_task(name: str, data_dir=None, limit: int | None = None, seed: int = 42, **kwargs):
    """A local task by MTEB name (or a short alias such as ``banking77``)."""
    canonical = TASK_ALIASES.get(name.lower(), name)
    if canonical not in LOCAL_TASKS:
        raise KeyError(f"unknown local task {name!r}; available: {sorted(LOCAL_TASKS)}")
    cls = LOCAL_TASKS[canonical]
    if canonical != "SciFact":
        kwargs.pop("n_distractors", None)
    if canonical != "Banking77Classification":
        kwargs.pop("n_experiments", None)
        kwargs.pop("samples_per_label", None)
    return cls(data_dir=data_dir, limit=limit, seed=seed, **kwargs)
