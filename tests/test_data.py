import json

import pytest

from grace_trl.data import DataValidationError, add_prompts, load_grace_dataset, parse_column_mapping, validate_dataset


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_committed_samples_load():
    sup = load_grace_dataset("sample-nli")
    assert len(sup) == 300 and set(sup.column_names) == {"query", "positive", "negatives"}
    assert all(len(n) == 1 for n in sup["negatives"])
    unsup = load_grace_dataset("sample-sentences", mode="unsupervised")
    assert len(unsup) == 300 and unsup.column_names == ["text"]


def test_simcse_csv_from_shared_data(shared_data):
    ds = load_grace_dataset(str(shared_data / "training" / "nli_triples_snli_devtest.csv"),
                            column_mapping="query=sent0,positive=sent1,negatives=hard_neg", limit=50)
    assert len(ds) == 50 and ds[0]["negatives"][0]


def test_column_mapping_parsing():
    assert parse_column_mapping("query=a,positive=b,negatives=c+d") == {"query": "a", "positive": "b",
                                                                         "negatives": ["c", "d"]}
    with pytest.raises(ValueError, match="field=column"):
        parse_column_mapping("query")
    with pytest.raises(ValueError, match="unknown"):
        parse_column_mapping("anchor=x")


def test_several_negative_columns_and_list_column(tmp_path):
    rows = [{"q": "a b", "p": "c d", "n1": "e", "n2": "f"}]
    ds = load_grace_dataset(write_jsonl(tmp_path / "x.jsonl", rows),
                            column_mapping="query=q,positive=p,negatives=n1+n2")
    assert ds[0]["negatives"] == ["e", "f"]
    rows = [{"query": "a", "positive": "b", "negatives": ["c", "d"]}]
    assert load_grace_dataset(write_jsonl(tmp_path / "y.jsonl", rows))[0]["negatives"] == ["c", "d"]


def test_missing_column_names_row_and_field(tmp_path):
    rows = [{"sent0": "a", "sent1": "b", "hard_neg": "c"}, {"sent0": "a", "hard_neg": "c"}]
    with pytest.raises(DataValidationError, match=r"row 1: missing column 'sent1' \(positive\)"):
        load_grace_dataset(write_jsonl(tmp_path / "x.jsonl", rows))


def test_empty_and_non_string_text(tmp_path):
    rows = [{"sent0": "a", "sent1": "  ", "hard_neg": "c"}, {"sent0": 3, "sent1": "b", "hard_neg": "c"}]
    with pytest.raises(DataValidationError) as err:
        load_grace_dataset(write_jsonl(tmp_path / "x.jsonl", rows))
    msg = str(err.value)
    assert "row 0, field 'sent1': expected a non-empty string, got an empty string" in msg
    assert "row 1, field 'sent0': expected a non-empty string, got int" in msg


def test_empty_csv_cell_is_reported(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("sent0,sent1,hard_neg\na,b,c\nd,,f\n")
    with pytest.raises(DataValidationError, match="row 1, field 'sent1'"):
        load_grace_dataset(str(path))


def test_inconsistent_negative_counts(tmp_path):
    rows = [{"query": "a", "positive": "b", "negatives": ["c"]},
            {"query": "a", "positive": "b", "negatives": ["c", "d"]}]
    with pytest.raises(DataValidationError, match="row 1, field 'negatives': expected 1 negative"):
        load_grace_dataset(write_jsonl(tmp_path / "x.jsonl", rows))
    with pytest.raises(DataValidationError, match="row 0, field 'negatives': expected 2"):
        load_grace_dataset(write_jsonl(tmp_path / "y.jsonl", rows), num_negatives=2)


def test_unsupervised_validation(tmp_path):
    with pytest.raises(DataValidationError, match="row 1, field 'text'"):
        load_grace_dataset(write_jsonl(tmp_path / "x.jsonl", [{"text": "ok"}, {"text": ""}]), mode="unsupervised")
    path = tmp_path / "s.txt"
    path.write_text("one sentence\n\nanother one\n")
    assert load_grace_dataset(str(path), mode="unsupervised")["text"] == ["one sentence", "another one"]


def test_unknown_layout_and_missing_file(tmp_path):
    with pytest.raises(DataValidationError, match="column_mapping"):
        load_grace_dataset(write_jsonl(tmp_path / "x.jsonl", [{"a": "x", "b": "y"}]))
    with pytest.raises(FileNotFoundError):
        load_grace_dataset(str(tmp_path / "nope.jsonl"))


def test_validate_prebuilt_dataset_and_prompts():
    from datasets import Dataset

    good = Dataset.from_dict({"query": ["q"], "positive": ["p"], "negatives": [["n"]]})
    validate_dataset(good, "supervised", 1)
    with pytest.raises(DataValidationError, match="missing column"):
        validate_dataset(Dataset.from_dict({"query": ["q"]}), "supervised", 1)
    with_prompts = add_prompts(good, "supervised", system_prompt="S")
    assert with_prompts[0]["prompt"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "p"}]


def test_check_embeddable_names_prompts_too_long_for_the_context(smollm2_path):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from grace_trl.data import DataValidationError, check_embeddable
    from grace_trl.prompts import PromptEncoder

    encode = PromptEncoder(AutoTokenizer.from_pretrained(smollm2_path), system_prompt=None)
    data = Dataset.from_dict({"text": ["short", "word " * 200, "fine"]})
    check_embeddable(data, "unsupervised", encode, max_prompt_tokens=512)
    with pytest.raises(DataValidationError, match=r"(?s)1 problem.*row 1, field 'text': its prompt has \d+ tokens"):
        check_embeddable(data, "unsupervised", encode, max_prompt_tokens=100)
