"""The generation check scores answers automatically and reports regressions against a reference model."""

import json

import pytest

from grace_trl.evaluation.generation_check import (
    MAX_PERPLEXITY_INCREASE,
    MAX_REGRESSION_RATE,
    QUESTIONS,
    compare_to_reference,
    generation_check,
    generation_kept,
    is_correct,
    summary_line,
)


def test_at_least_fifty_distinct_questions_with_answers():
    assert len(QUESTIONS) >= 50
    assert len({q for q, _ in QUESTIONS}) == len(QUESTIONS)
    assert all(accepted and all(a.strip() for a in accepted) for _, accepted in QUESTIONS)


@pytest.mark.parametrize("answer,accepted,right", [
    ("The capital of France is Paris.", ("Paris",), True),
    ("the capital is paris", ("Paris",), True),
    ("Parisian food is famous.", ("Paris",), False),
    ("There are 24 hours in a day.", ("24",), True),
    ("There are 240 minutes in an hour.", ("24",), False),
    ("The freezing point of water is -18.0°C.", ("0", "zero"), False),
    ("Water freezes at 0 degrees Celsius.", ("0", "zero"), True),
    ("10 minus 3 is 7.", ("7", "seven"), True),
    ("It is 1.7 or so.", ("7",), False),
    ("Plants absorb carbon dioxide.", ("carbon dioxide", "CO2"), True),
])
def test_answers_count_only_whole_words_and_numbers(answer, accepted, right):
    assert is_correct(answer, accepted) is right


def _result(correct: list[bool], ppl: float) -> dict:
    answers = [{"question": f"q{i}", "expected": ["x"], "answer": "", "correct": c} for i, c in enumerate(correct)]
    return {"answers": answers, "perplexity": ppl, "n_correct": sum(correct), "n_questions": len(correct)}


def test_regressions_are_counted_against_the_reference_not_as_a_net_score():
    base = _result([True] * 20 + [False] * 20, 30.0)
    # same net score (20/40), but 4 of the base's right answers lost and 4 others gained
    trained = _result([False] * 4 + [True] * 16 + [True] * 4 + [False] * 16, 30.3)
    trained.update(compare_to_reference(trained, base))
    assert trained["n_correct"] == base["n_correct"]
    assert trained["regressions"] == ["q0", "q1", "q2", "q3"] and len(trained["gains"]) == 4
    assert trained["regression_rate"] == pytest.approx(4 / 20)
    assert trained["perplexity_change"] == pytest.approx(0.01)
    assert not generation_kept(trained)  # 20% lost > 5%
    assert "4 of the reference's 20 right answers lost" in summary_line("grace", trained)


def test_generation_kept_applies_both_limits():
    base = _result([True] * 20, 30.0)
    one_lost = _result([False] + [True] * 19, 30.0)
    one_lost.update(compare_to_reference(one_lost, base))
    assert one_lost["regression_rate"] == pytest.approx(MAX_REGRESSION_RATE) and generation_kept(one_lost)
    worse_ppl = _result([True] * 20, 30.0 * (1 + MAX_PERPLEXITY_INCREASE) + 0.01)
    worse_ppl.update(compare_to_reference(worse_ppl, base))
    assert worse_ppl["regressions"] == [] and not generation_kept(worse_ppl)
    with pytest.raises(ValueError, match="reference"):
        generation_kept(base)


def test_reference_must_answer_the_same_questions():
    base = _result([True] * 3, 30.0)
    other = _result([True] * 4, 30.0)
    with pytest.raises(ValueError, match="'q3'"):
        compare_to_reference(other, base)


@pytest.mark.slow
def test_the_check_fails_a_damaged_real_model_and_passes_the_model_itself(smollm2_path):
    """On the embedded SmolLM2: against its own result the model is kept; with noise in its MLPs it is not."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    questions = QUESTIONS[:16]
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    base = generation_check(model, tok, max_new_tokens=16, questions=questions)
    assert base["n_correct"] >= 8, base["answers"]  # the base model knows most of these
    again = generation_check(model, tok, max_new_tokens=16, questions=questions, reference=base)
    assert again["regressions"] == [] and again["perplexity_change"] == pytest.approx(0.0, abs=1e-6)
    assert generation_kept(again)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mlp" in name:
                p.add_(0.02 * torch.randn_like(p))
    damaged = generation_check(model, tok, max_new_tokens=16, questions=questions, reference=base)
    assert damaged["regression_rate"] > MAX_REGRESSION_RATE and not generation_kept(damaged)


def test_eval_report_lists_regressions_against_the_first_model(tiny_model_path, tmp_path):
    """`grace-trl eval --generation-check`: the first model is the reference, later ones get regressions."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grace_trl.evaluation.report import generation_row
    from grace_trl.evaluation.runner import ModelRun, _generation_check

    changed = tmp_path / "changed"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    model.save_pretrained(changed)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(changed)

    runs = [ModelRun("base", tiny_model_path, "sentence-transformers"),
            ModelRun("changed", str(changed), "sentence-transformers")]
    base = _generation_check(runs[0], None, None, None)
    other = _generation_check(runs[1], None, None, base)
    assert "regressions" not in base and {"regressions", "gains", "kept"} <= set(other)
    assert other["perplexity_change"] != pytest.approx(0.0)
    assert generation_row("base", base).startswith("| base | ") and "(reference)" in generation_row("base", base)
    row = generation_row("changed", other)
    assert f"{100 * other['perplexity_change']:+.1f}%" in row and row.endswith(("| yes |", "| no |"))


def _first_answer_token(model, tok, question: str) -> int:
    import torch

    prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                     tokenize=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        return int(model(torch.tensor([prompt])).logits[0, -1].argmax())


def test_answers_end_at_every_eos_id_of_the_generation_config(tiny_model_path):
    """A chat model may end its turn with any of a list of ids (Llama 3); the check must stop at each of them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grace_trl.evaluation.generation_check import greedy_answers

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    question = QUESTIONS[0][0]
    first = _first_answer_token(model, tok, question)
    assert first != tok.eos_token_id
    generated = []
    generate = model.generate

    def counting(**kwargs):
        out = generate(**kwargs)
        generated.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    model.generate = counting
    greedy_answers(model, tok, [question], max_new_tokens=6)
    assert generated == [6]  # the random model never writes its tokenizer's EOS
    model.generation_config.eos_token_id = [tok.eos_token_id, first]
    greedy_answers(model, tok, [question], max_new_tokens=6)
    assert generated == [6, 1]  # its first token is one of the config's EOS ids: the answer ends there


def test_answer_token_ids_prefer_the_generation_config_and_fall_back_to_the_tokenizer():
    from types import SimpleNamespace

    from grace_trl.evaluation.generation_check import answer_token_ids

    tok = SimpleNamespace(eos_token_id=2, pad_token_id=7)
    listed = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[5, 6, 5], pad_token_id=4))
    assert answer_token_ids(listed, tok) == ([5, 6], 4)
    bare = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=None, pad_token_id=None))
    assert answer_token_ids(bare, tok) == ([2], 7)
    assert answer_token_ids(SimpleNamespace(), SimpleNamespace(eos_token_id=2, pad_token_id=None)) == ([2], 2)
    with pytest.raises(ValueError, match="EOS"):
        answer_token_ids(bare, SimpleNamespace(eos_token_id=None, pad_token_id=None))


def test_one_reference_cache_keyed_by_the_weights_serves_trainer_and_benchmarks(tiny_model_path, tmp_path,
                                                                                monkeypatch):
    """The base model is checked once whoever asks first: the cache file is named by the weights' fingerprint."""
    import importlib.util
    import shutil
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import grace_trl.evaluation.generation_check as gc

    monkeypatch.setenv("GRACE_TRL_CACHE", str(tmp_path / "cache"))
    runs = []
    real = gc.generation_check
    monkeypatch.setattr(gc, "generation_check", lambda *a, **kw: runs.append(1) or real(*a, **kw))
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    first = gc.reference_generation_check(model, tok)
    files = list((tmp_path / "cache" / "generation_check").glob("*.json"))
    assert runs == [1] and len(files) == 1 and files[0].stem == gc.reference_key(model, tok)
    # the same weights in another folder, through the benchmark script: read back, and written as its report
    moved = tmp_path / "moved"
    shutil.copytree(tiny_model_path, moved)
    spec = importlib.util.spec_from_file_location(
        "generation_report", Path(__file__).resolve().parents[1] / "benchmarks" / "generation_report.py")
    report_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report_module)
    base = report_module.reference_result(str(moved), report=tmp_path / "generation_base.json")
    assert runs == [1] and base["perplexity"] == first["perplexity"] and base["model"] == str(moved)
    assert json.loads((tmp_path / "generation_base.json").read_text())["n_correct"] == first["n_correct"]
    # another EOS set or other weights are another reference; refresh and an unreadable file recompute
    model.generation_config.eos_token_id = [tok.eos_token_id, 5]
    other_key = gc.reference_key(model, tok)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert gc.reference_key(model, tok) not in (files[0].stem, other_key)
    gc.reference_generation_check(model, tok)
    assert runs == [1, 1]
    gc.reference_generation_check(model, tok, refresh=True)
    assert runs == [1, 1, 1]
    files[0].write_text("{not json")
    again = gc.reference_generation_check(AutoModelForCausalLM.from_pretrained(tiny_model_path), tok)
    assert runs == [1, 1, 1, 1] and again["answers"] == first["answers"]


def test_eval_reference_comes_from_the_shared_cache(tiny_model_path, tmp_path, monkeypatch):
    """`grace-trl eval --generation-check` reads the reference the trainer and benchmarks cached for these weights."""
    from grace_trl.evaluation import generation_check as gc
    from grace_trl.evaluation.runner import ModelRun, _generation_check

    monkeypatch.setenv("GRACE_TRL_CACHE", str(tmp_path / "cache"))
    run = ModelRun("base", tiny_model_path, "sentence-transformers")
    first = _generation_check(run, None, None, None)
    assert list((tmp_path / "cache" / "generation_check").glob("*.json")), "the reference was not cached"

    def fail(*args, **kwargs):
        raise AssertionError("the reference was computed again instead of read from the cache")

    monkeypatch.setattr(gc, "generation_check", fail)
    again = _generation_check(run, None, None, None)
    assert again["perplexity"] == first["perplexity"] and again["n_correct"] == first["n_correct"]
