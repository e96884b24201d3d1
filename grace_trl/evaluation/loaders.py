"""Readers of the offline benchmark files (STSbenchmark, BEIR SciFact, Banking77) and their seeded reductions.

Kept apart from :mod:`grace_trl.evaluation.tasks`, whose classes subclass mteb's: the dev-set evaluators that
run during training read the same files without importing mteb (and polars) into a training process.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
