"""Training data: load supervised (query, positive, negatives) or unsupervised (text) rows.

Everything is validated before training starts, so a bad row fails in seconds with its index and
field instead of hours later inside a reward. Canonical columns after loading:

* supervised: ``query`` (str), ``positive`` (str), ``negatives`` (list[str], same length per row)
* unsupervised: ``text`` (str)

Rows that repeat an earlier row exactly are reported as a warning with their row numbers, not an
error (see :func:`warn_duplicate_rows`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from datasets import Dataset

from .prompts import DEFAULT_SYSTEM_PROMPT, build_messages

SAMPLE_DIR = Path(__file__).resolve().parent / "data"
# Small samples committed with the package so the CPU default runs without ../shared (see data/PROVENANCE.md).
SAMPLE_DATASETS = {
    "sample-nli": SAMPLE_DIR / "nli_sample.csv",
    "sample-sentences": SAMPLE_DIR / "sentences_sample.txt",
    # the 6,337 distinct SNLI dev/test triples the samples are drawn from: enough rollouts for the pure-GRACE recipes
    "snli-triples": SAMPLE_DIR / "nli_triples_snli.csv",
}
# supervised: (query, positive, negatives) rows; unsupervised: single texts (the mode decides the reward too)
MODES = ("supervised", "unsupervised")
DEFAULT_MODE = "supervised"
SUPERVISED_FIELDS = ("query", "positive", "negatives")
UNSUPERVISED_FIELDS = ("text",)
# Column names recognised without a mapping (SimCSE's NLI triples first).
KNOWN_LAYOUTS = [
    {"query": "sent0", "positive": "sent1", "negatives": "hard_neg"},
    {"query": "anchor", "positive": "positive", "negatives": "negative"},
    {"query": "query", "positive": "positive", "negatives": "negatives"},
    {"query": "query", "positive": "positive", "negatives": "negative"},
    {"query": "anchor", "positive": "entailment", "negatives": "contradiction"},
]
MAX_REPORTED_ERRORS = 10
logger = logging.getLogger(__name__)


class DataValidationError(ValueError):
    """Raised with every problem found (up to ten), each naming its row and field."""


def parse_column_mapping(mapping: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``"query=sent0,positive=sent1,negatives=hard_neg"`` → dict; ``+`` joins several negative columns."""
    if mapping is None or mapping == "":
        return {}
    if isinstance(mapping, Mapping):
        return dict(mapping)
    out: dict[str, Any] = {}
    for part in str(mapping).split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"column_mapping entry {part!r} must look like field=column")
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in SUPERVISED_FIELDS + UNSUPERVISED_FIELDS:
            raise ValueError(f"column_mapping field {key!r} is unknown; expected one of "
                             f"{SUPERVISED_FIELDS + UNSUPERVISED_FIELDS}")
        out[key] = value.split("+") if key == "negatives" and "+" in value else value
    return out


class _Rows(list):
    """Rows read from a local file, kept as Python objects so validation sees the raw values."""

    def __init__(self, rows, columns):
        super().__init__(rows)
        self.column_names = list(columns)

    def select(self, indices):
        return _Rows([self[i] for i in indices], self.column_names)


def _read_text(path: Path) -> str:
    """The file as text; bytes that are not UTF-8 fail naming the file, line and column."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        start = err.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise DataValidationError(f"{path}, line {line}, byte {column} of the line: not valid UTF-8 "
                                  f"(byte {data[start:start + 1]!r}); re-save the file as UTF-8") from None


def _read_local(path: Path) -> _Rows:
    import csv
    import io
    import json

    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        text = _read_text(path)
        delimiter = "\t" if suffix == ".tsv" else ","
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise DataValidationError(f"{path}: the file is empty (expected a header line and rows)")
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise DataValidationError(f"{path}, line 1: column(s) {repeated} appear more than once in the header; "
                                      "rename them so each column has one name")
        rows = []
        sep = "tab" if delimiter == "\t" else "comma"
        for record in reader:
            if not record:
                continue  # a blank line
            if len(record) != len(header):
                # csv counts physical lines, so a quoted field spanning lines still reports where the row ends
                raise DataValidationError(
                    f"{path}, line {reader.line_num}: {len(record)} field(s) where the header has {len(header)}; "
                    f"a field holding a {sep} must be quoted (\"...\")")
            rows.append(dict(zip(header, record)))
        if not rows:
            raise DataValidationError(f"{path}: the file has a header ({', '.join(header)}) but no rows")
        return _Rows(rows, header)
    if suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(io.StringIO(_read_text(path), newline=None), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataValidationError(f"{path}, line {line_no}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise DataValidationError(f"{path}, line {line_no}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    elif suffix == ".json":
        try:
            rows = json.loads(_read_text(path))
        except json.JSONDecodeError as err:
            raise DataValidationError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from err
        if not isinstance(rows, list):
            raise DataValidationError(f"{path}: expected a JSON list of objects")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowInvalid, OSError) as err:
            raise DataValidationError(f"{path}: not a readable Parquet file ({' '.join(str(err).split())[:200]}); "
                                      "is it another format under a .parquet name?") from None
    elif suffix == ".txt":
        rows = [{"text": line.rstrip("\n")} for line in io.StringIO(_read_text(path), newline=None) if line.strip()]
        if not rows:
            raise DataValidationError(f"{path}: the file is empty (expected one text per line)")
        return _Rows(rows, ["text"])
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; "
                         "expected .jsonl, .json, .csv, .tsv, .parquet or .txt")
    if not rows:
        raise DataValidationError(f"{path}: the file is empty (no rows)")
    columns: dict[str, None] = {}
    for row in rows:
        if not isinstance(row, dict):
            raise DataValidationError(f"{path}: expected every row to be an object, got {type(row).__name__}")
        columns.update(dict.fromkeys(row))
    return _Rows(rows, columns)


def read_source(source: str, dataset_config: str | None = None, split: str = "train"):
    """Rows of ``split`` from a local file, a committed sample name, a local folder or a Hub dataset id.

    A single file is one split, ``train``, as ``datasets.load_dataset(..., data_files=file)`` names it. A folder
    (``train.csv``, ``test.csv``, ...) or a Hub id goes to ``datasets.load_dataset``, which names its splits; the
    Hub needs the network unless the dataset is cached.
    """
    path = SAMPLE_DATASETS.get(source) or Path(os.path.expanduser(source))
    if path.is_file():
        if split.split("[")[0] != "train":
            raise DataValidationError(f"{source} has no split {split!r}; its splits are ['train'] (a single file is "
                                      "one split; pass a folder with train and test files)")
        return _read_local(path)
    if path.suffix in (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt"):
        raise FileNotFoundError(f"dataset file {source} does not exist")
    from datasets import get_dataset_split_names, load_dataset

    try:
        return load_dataset(source, dataset_config, split=split)
    except (ConnectionError, FileNotFoundError) as err:
        # offline, or no such Hub dataset: say so in one line, with the names a typo was probably aiming at
        import difflib

        close = difflib.get_close_matches(source, list(SAMPLE_DATASETS), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else (
            f"; local files need an existing path, committed samples are {sorted(SAMPLE_DATASETS)}")
        raise DataValidationError(f"dataset {source!r} is neither a local file or folder nor a Hub dataset that can "
                                  f"be loaded now ({' '.join(str(err).split())[:200]}){hint}") from None
    except ValueError as err:
        if not str(err).startswith("Unknown split"):
            raise
        splits = get_dataset_split_names(source, dataset_config)
        raise DataValidationError(f"{source} has no split {split!r}; its splits are {splits}") from None


def _resolve_mapping(columns: list[str], mode: str, mapping: dict[str, Any]) -> dict[str, Any]:
    if mode == "unsupervised":
        column = mapping.get("text") or next((c for c in ("text", "sentence") if c in columns), None)
        if column is None:
            if len(columns) == 1:
                column = columns[0]
            else:
                raise DataValidationError(f"unsupervised data needs a 'text' column (or column_mapping text=...); "
                                          f"found columns {columns}")
        return {"text": column}
    if mapping:
        resolved = dict(mapping)
        resolved.setdefault("negatives", None)
        return resolved
    for layout in KNOWN_LAYOUTS:
        if layout["query"] in columns and layout["positive"] in columns:
            neg = layout["negatives"] if layout["negatives"] in columns else None
            return {"query": layout["query"], "positive": layout["positive"], "negatives": neg}
    raise DataValidationError(
        f"cannot tell which columns are query/positive/negatives among {columns}; pass column_mapping "
        "like 'query=sent0,positive=sent1,negatives=hard_neg'")


def _check_text(value: Any, row: int, field: str, errors: list[str]) -> None:
    if not isinstance(value, str):
        errors.append(f"row {row}, field '{field}': expected a non-empty string, "
                      f"got {type(value).__name__} {value!r:.60}")
    elif not value.strip():
        errors.append(f"row {row}, field '{field}': expected a non-empty string, got an empty string")
    else:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            errors.append(f"row {row}, field '{field}': invalid Unicode at character {err.start} "
                          f"({value[err.start]!r} is a lone surrogate)")


def _raise(errors: list[str], total: int) -> None:
    more = f"\n  ... and {total - MAX_REPORTED_ERRORS} more" if total > MAX_REPORTED_ERRORS else ""
    listed = "\n  ".join(errors[:MAX_REPORTED_ERRORS])
    raise DataValidationError(f"{total} problem(s) in the training data:\n  {listed}{more}")


def normalize_rows(rows: Iterable[Mapping[str, Any]], mode: str, mapping: dict[str, Any],
                   num_negatives: int | None = None) -> dict[str, list]:
    """Map, validate and convert rows to canonical columns; raises DataValidationError listing bad rows."""
    errors: list[str] = []
    total_errors = 0
    if mode == "unsupervised":
        col = mapping["text"]
        texts = []
        for i, row in enumerate(rows):
            before = len(errors)
            if col not in row:
                errors.append(f"row {i}: missing column '{col}' (text)")
            else:
                _check_text(row[col], i, col, errors)
                texts.append(row[col])
            total_errors += len(errors) - before
        if total_errors:
            _raise(errors, total_errors)
        if not texts:
            raise DataValidationError("the dataset has no rows")
        return {"text": texts}

    q_col, p_col, n_spec = mapping.get("query"), mapping.get("positive"), mapping.get("negatives")
    if not q_col or not p_col:
        raise DataValidationError("supervised data needs both 'query' and 'positive' in column_mapping")
    out: dict[str, list] = {"query": [], "positive": [], "negatives": []}
    expected = num_negatives
    expected_from = f"num_negatives={num_negatives}" if num_negatives is not None else None
    for i, row in enumerate(rows):
        before = len(errors)
        for field, col in (("query", q_col), ("positive", p_col)):
            if col not in row:
                errors.append(f"row {i}: missing column '{col}' ({field})")
            else:
                _check_text(row[col], i, col, errors)
        negs: list = []
        if isinstance(n_spec, list):
            for col in n_spec:
                if col not in row:
                    errors.append(f"row {i}: missing column '{col}' (negative)")
                else:
                    negs.append(row[col])
        elif n_spec:
            if n_spec not in row:
                errors.append(f"row {i}: missing column '{n_spec}' (negatives)")
            else:
                value = row[n_spec]
                negs = list(value) if isinstance(value, (list, tuple)) else [value]
        for j, neg in enumerate(negs):
            label = n_spec[j] if isinstance(n_spec, list) else (f"{n_spec}[{j}]" if len(negs) > 1 else n_spec)
            _check_text(neg, i, label, errors)
        if expected is None and len(errors) == before:
            expected, expected_from = len(negs), f"like row {i}"
        if expected is not None and len(negs) != expected and len(errors) == before:
            errors.append(f"row {i}, field 'negatives': expected {expected} negative(s) ({expected_from}), "
                          f"got {len(negs)}")
        total_errors += len(errors) - before
        if len(errors) == before:
            out["query"].append(row[q_col])
            out["positive"].append(row[p_col])
            out["negatives"].append([str(n) for n in negs])
    if total_errors:
        _raise(errors, total_errors)
    if not out["query"]:
        raise DataValidationError("the dataset has no rows")
    return out


def load_grace_dataset(
    source: str,
    mode: str = DEFAULT_MODE,
    column_mapping: str | Mapping[str, Any] | None = None,
    split: str = "train",
    dataset_config: str | None = None,
    num_negatives: int | None = None,
    limit: int | None = None,
) -> Dataset:
    """Load, map and validate a training set into GRACE's canonical columns."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    raw = read_source(source, dataset_config, split)
    if limit is not None:
        raw = raw.select(range(min(limit, len(raw))))
    mapping = _resolve_mapping(list(raw.column_names), mode, parse_column_mapping(column_mapping))
    _check_mapped_columns(source, list(raw.column_names), mapping)
    try:
        columns = normalize_rows(raw, mode, mapping, num_negatives)
    except DataValidationError as err:
        raise DataValidationError(f"{source}: {err}") from None
    return Dataset.from_dict(columns)


def _check_mapped_columns(source: str, columns: list[str], mapping: dict[str, Any]) -> None:
    """A column_mapping that names a column the data lacks fails once, listing the real columns."""
    for field, spec in mapping.items():
        for col in spec if isinstance(spec, list) else [spec]:
            if col is not None and col not in columns:
                raise DataValidationError(f"{source}: column_mapping {field}={col!r} names a column the data does "
                                          f"not have; its columns are {columns}")


def find_duplicate_rows(columns: Mapping[str, list], max_reported: int = 10) -> tuple[int, list[tuple[int, int]]]:
    """``(count, [(row, first_row), ...])`` of rows identical to an earlier row in every column."""
    names = list(columns)
    seen: dict[tuple, int] = {}
    pairs: list[tuple[int, int]] = []
    count = 0
    for i, values in enumerate(zip(*(columns[n] for n in names))):
        key = tuple(tuple(v) if isinstance(v, list) else v for v in values)
        first = seen.setdefault(key, i)
        if first != i:
            count += 1
            if len(pairs) < max_reported:
                pairs.append((i, first))
    return count, pairs


def warn_duplicate_rows(columns: Mapping[str, list]) -> int:
    """Warn (not fail) about repeated rows, naming them; returns how many repeat an earlier row.

    A copy that lands in the same batch becomes its own in-batch negative, which punishes exactly the
    similarity training should reward. Large mined datasets often hold a few exact copies that are
    harmless when shuffled apart, so this warns rather than refusing the data.
    """
    count, pairs = find_duplicate_rows(columns)
    if count:
        shown = ", ".join(f"row {i} repeats row {j}" for i, j in pairs)
        more = ", ..." if count > len(pairs) else ""
        logger.warning("%d duplicate row(s) in the training data (%s%s); a copy in the same batch becomes its own "
                       "in-batch negative. Drop them, e.g. with pandas drop_duplicates", count, shown, more)
    return count


def validate_dataset(dataset, mode: str, num_negatives: int | None = None) -> None:
    """Check a dataset already in canonical columns (e.g. one a user built in a script)."""
    fields = SUPERVISED_FIELDS if mode == "supervised" else UNSUPERVISED_FIELDS
    columns = list(dataset.column_names)
    missing = [f for f in fields if f not in columns and not (f == "negatives" and num_negatives == 0)]
    if missing:
        raise DataValidationError(f"{mode} training data is missing column(s) {missing}; found {columns}. "
                                  "Use grace_trl.data.load_grace_dataset(..., column_mapping=...) to map columns.")
    mapping = {f: f for f in fields if f in columns}
    if mode == "supervised":
        mapping.setdefault("negatives", None)
    warn_duplicate_rows(normalize_rows(dataset, mode, mapping, num_negatives))


def add_prompts(dataset: Dataset, mode: str, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                instruction: str | None = None) -> Dataset:
    """Add TRL's conversational ``prompt`` column: the trained text (positive document or the text)."""
    source = "positive" if mode == "supervised" else "text"

    def _prompt(row):
        return {"prompt": build_messages(row[source], system_prompt, instruction)}

    return dataset.map(_prompt, desc="building GRACE prompts")


def check_prompt_column(dataset, mode: str, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                        instruction: str | None = None) -> None:
    """Refuse a ``prompt`` column that differs from the prompt GRACE builds from the row.

    Anchors, the saved settings and the encoder all build the prompt from ``system_prompt`` and
    ``instruction``; a precomputed prompt written under other settings would train one prompt and
    score another. Such a column is refused rather than rebuilt, so nothing the user wrote is
    silently replaced.
    """
    source = "positive" if mode == "supervised" else "text"
    for i, row in enumerate(dataset):
        expected = build_messages(row[source], system_prompt, instruction)
        if row["prompt"] != expected:
            raise DataValidationError(
                f"row {i}, field 'prompt': differs from the prompt built from '{source}' with this config's "
                f"system_prompt/instruction (expected {expected!r:.200}, got {row['prompt']!r:.200}); drop the "
                "'prompt' column to let GRACE build it")


def check_embeddable(dataset, mode: str, encode: Callable[[str], Any], num_negatives: int | None = None,
                     max_prompt_tokens: int | None = None) -> None:
    """Build every text's prompt as training will (``encode`` is a :class:`~grace_trl.prompts.PromptEncoder`).

    Catches, before any step runs, texts whose user content the chat template renders as nothing and
    prompts that leave no room to generate within ``max_prompt_tokens`` (e.g. vLLM's context).
    """
    fields = ("query", "positive", "negatives") if mode == "supervised" else ("text",)
    errors: list[str] = []
    total = 0
    for i, row in enumerate(dataset):
        for field in fields:
            values = row.get(field) or []
            values = list(values)[:num_negatives] if field == "negatives" else [values]
            for j, text in enumerate(values):
                label = f"{field}[{j}]" if field == "negatives" else field
                try:
                    n_tokens = len(encode(text).input_ids)
                except ValueError as err:
                    problem = str(err)
                else:
                    if max_prompt_tokens is None or n_tokens < max_prompt_tokens:
                        continue
                    problem = (f"its prompt has {n_tokens} tokens, which leaves no room to generate within "
                               f"{max_prompt_tokens}; shorten the text or raise the limit")
                total += 1
                if len(errors) < MAX_REPORTED_ERRORS:
                    errors.append(f"row {i}, field '{label}': {problem}")
    if total:
        _raise(errors, total)
