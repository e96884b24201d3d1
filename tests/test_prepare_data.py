"""prepare-data: real SNLI triples and SimCSE-style sentences → canonical JSONL the trainer's loader accepts,
over-long rows dropped by the policy's own templated token count, bad rows reported by row and field."""

from __future__ import annotations

import json

import pytest

from grace_trl.commands.prepare_data import main
from grace_trl.data import DataValidationError, load_grace_dataset
from grace_trl.prompts import DEFAULT_SYSTEM_PROMPT


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_supervised_nli_triples_round_trip(shared_data, tmp_path, capsys):
    src = shared_data / "training" / "nli_triples_snli_devtest.csv"
    out = tmp_path / "nli.jsonl"
    assert main(["--input", str(src), "--output", str(out), "--mode", "supervised",
                 "--column-mapping", "query=sent0,positive=sent1,negatives=hard_neg", "--limit", "200"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows_read"] == summary["rows_written"] == 200
    rows = _read_jsonl(out)
    direct = load_grace_dataset(str(src), column_mapping="query=sent0,positive=sent1,negatives=hard_neg", limit=200)
    assert rows == direct.to_list()
    assert all(len(r["negatives"]) == 1 for r in rows)
    again = load_grace_dataset(str(out), mode="supervised", num_negatives=1)  # no mapping needed any more
    assert again.to_list() == rows


def test_length_filter_uses_the_templated_prompt(shared_data, tmp_path, capsys, smollm2_path):
    from transformers import AutoTokenizer

    src = shared_data / "training" / "nli_triples_snli_devtest.csv"
    out = tmp_path / "short.jsonl"
    limit = 60
    assert main(["--input", str(src), "--output", str(out), "--limit", "300", "--tokenizer", "smollm2-135m",
                 "--max-prompt-tokens", str(limit)]) == 0
    summary = json.loads(capsys.readouterr().out)
    kept = _read_jsonl(out)
    assert 0 < summary["dropped_too_long"] < 300
    assert summary["rows_written"] == len(kept) == 300 - summary["dropped_too_long"]

    tok = AutoTokenizer.from_pretrained(smollm2_path)

    def prompt_len(text):  # independent count: the chat template the policy sees, system prompt included
        messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": text}]
        ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
        return len(ids["input_ids"])

    def longest(row):
        return max(prompt_len(t) for t in [row["query"], row["positive"], *row["negatives"]])

    assert all(longest(r) <= limit for r in kept)
    everything = load_grace_dataset(str(src), limit=300).to_list()
    dropped = [everything[i] for i in summary["first_dropped_rows"]]
    assert dropped and all(longest(r) > limit for r in dropped)
    assert summary["longest_prompt_tokens"] == max(longest(r) for r in everything)


def test_unsupervised_sentences(shared_data, tmp_path):
    src = shared_data / "training" / "unsup_sentences.txt"
    out = tmp_path / "sentences.jsonl"
    assert main(["--input", str(src), "--output", str(out), "--mode", "unsupervised", "--limit", "50"]) == 0
    rows = _read_jsonl(out)
    with open(src, encoding="utf-8") as f:
        first = [line.rstrip("\n") for line in f if line.strip()][:50]
    assert rows == [{"text": t} for t in first]
    assert load_grace_dataset(str(out), mode="unsupervised").to_list() == rows


def test_bad_rows_and_arguments_are_reported(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("sent0,sent1,hard_neg\na query,a positive,a negative\nsecond,,neg\n")
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataValidationError, match=r"row 1, field 'sent1'"):
        main(["--input", str(bad), "--output", str(out)])
    assert not out.exists()
    with pytest.raises(ValueError, match="go together"):
        main(["--input", str(bad), "--output", str(out), "--max-prompt-tokens", "10"])
    with pytest.raises(ValueError, match=".jsonl"):
        main(["--input", str(bad), "--output", str(tmp_path / "out.csv")])
    with pytest.raises(FileNotFoundError):
        main(["--input", str(tmp_path / "missing.csv"), "--output", str(out)])
