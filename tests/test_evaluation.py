"""Offline MTEB tasks (row counts, reductions, input errors) and an end-to-end `grace-trl eval` run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grace_trl.evaluation.tasks import (
    get_local_task,
    load_banking77,
    load_scifact,
    load_sts_benchmark,
    reduce_retrieval,
)


def test_sts_benchmark_matches_mteb_row_count(shared_data):
    rows = load_sts_benchmark(shared_data)
    assert len(rows) == 1379
    assert all(0.0 <= s <= 5.0 for _, _, s in rows)
    assert rows[0][:2] == ("A girl is styling her hair.", "A girl is brushing her hair.")


def test_scifact_matches_mteb_row_counts(shared_data):
    data = load_scifact(shared_data)
    assert len(data.corpus) == 5183
    assert len(data.queries) == 300
    assert sum(len(v) for v in data.qrels.values()) == 339


def test_banking77_matches_mteb_row_counts(shared_data):
    data = load_banking77(shared_data)
    assert len(data["test"]) == 3080
    assert len(data["train"]) == 10003
    assert len({y for _, y in data["test"]}) == 77


def test_reduced_scifact_keeps_all_relevant_docs_and_is_seeded(shared_data):
    full = load_scifact(shared_data)
    red = reduce_retrieval(full, limit=20, n_distractors=30, seed=1)
    assert len(red.queries) == 20 and red.reduced
    relevant = {d for q in red.qrels for d in red.qrels[q]}
    assert relevant <= set(red.corpus)
    assert len(red.corpus) == len(relevant) + 30
    again = reduce_retrieval(full, limit=20, n_distractors=30, seed=1)
    assert again.queries == red.queries and list(again.corpus) == list(red.corpus)
    assert reduce_retrieval(full, limit=20, n_distractors=30, seed=2).queries != red.queries


def test_local_tasks_label_reductions(shared_data):
    full = get_local_task("STSBenchmark", data_dir=shared_data)
    full.load_data()
    assert len(full.dataset["test"]) == 1379 and not full.reduced
    small = get_local_task("stsb", data_dir=shared_data, limit=50)
    small.load_data()
    assert len(small.dataset["test"]) == 50 and small.reduction["full_pairs"] == 1379
    bank = get_local_task("banking77", data_dir=shared_data, limit=40)
    bank.load_data()
    assert len(bank.dataset["test"]) == 40 and bank.n_experiments == 1 and bank.reduced
    assert bank.metadata.main_score == "accuracy"
    with pytest.raises(KeyError, match="unknown local task"):
        get_local_task("NFCorpus")


def test_bad_rows_name_the_line(tmp_path):
    (tmp_path / "STSBenchmark").mkdir()
    (tmp_path / "STSBenchmark" / "sts-test.csv").write_text(
        "g\tf\t2012\t1\t4.0\tA\tB\n" "g\tf\t2012\t2\tgood\tC\tD\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"sts-test.csv:2: column 5 \(score\)"):
        load_sts_benchmark(tmp_path)
    with pytest.raises(FileNotFoundError, match="GRACE_TRL_DATA_DIR"):
        load_banking77(tmp_path)


def test_eval_cli_tiny_model_writes_mteb_results(tiny_model_path, shared_data, tmp_path, caplog):
    import logging

    import mteb
    from mteb.results import TaskResult

    from grace_trl.commands.eval import main

    out = tmp_path / "eval"
    args = ["--model", f"tiny={tiny_model_path}", "--with-and-without-rationale", "--tasks",
            "STSBenchmark,SciFact,Banking77", "--limit", "6", "--scifact-distractors", "6",
            "--samples-per-label", "1",
            "--max-new-tokens", "2", "--batch-size", "32", "--samples", "2", "--data-dir", str(shared_data),
            "--output-dir", str(out)]
    rc = main(args)
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in results["models"]] == ["tiny (no rationale)", "tiny (rationale)"]
    assert results["leaderboard_comparable"] is False
    for task in results["tasks"]:
        assert task["reduced"] is True
        for score in task["scores"].values():
            assert -1.0 <= score <= 1.0
    files = sorted(Path(results["mteb_results_dir"]).rglob("*.json"))
    task_files = [f for f in files if f.name != "model_meta.json"]
    assert len(task_files) == 6  # 3 tasks x 2 settings
    for f in task_files:
        tr = TaskResult.from_disk(f)
        assert tr.task_name in {"STSBenchmark", "SciFact", "Banking77Classification"}
        label = "tiny (rationale)" if "rationale_True" in str(f) else "tiny (no rationale)"
        expected = next(t for t in results["tasks"] if t["name"] == tr.task_name)["scores"][label]
        assert tr.get_score() == pytest.approx(expected, abs=1e-5)
        assert "limit_6" in str(f)  # the reduction is part of mteb's experiment name
    md = (out / "results.md").read_text()
    assert "NOT comparable" in md and "Retrieval" in md and "Avg" in md
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert "Sample STS pairs" in (out / "report.html").read_text()
    assert len(results["samples"]["tiny (rationale)"]) == 2
    assert isinstance(mteb.ResultCache(out / "mteb"), mteb.ResultCache)
    # n and a 95% bootstrap interval per score, recomputed from mteb's saved predictions
    units = {"STSBenchmark": "pairs", "SciFact": "queries", "Banking77Classification": "examples"}
    for task in results["tasks"]:
        assert (task["n"], task["unit"]) == (6, units[task["name"]])
        for label, score in task["scores"].items():
            interval = task["intervals"][label]
            assert interval["score"] == pytest.approx(score, abs=1e-5)  # the statistic mteb reports (5 decimals)
            assert interval["low"] <= interval["score"] <= interval["high"]
    page = (out / "report.html").read_text()
    assert "n = 6 pairs" in page and "n = 6 queries" in page and "n = 6 examples" in page
    assert "95% interval" in page
    # a repeated evaluation reads mteb's embedding cache instead of encoding again
    assert sorted(p.name for p in (out / "embedding_cache").rglob("*.npy"))
    before = json.loads((out / "results.json").read_text())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mteb"):
        assert main(args) == 0
    assert "All items found in cache" in caplog.text and "new items" not in caplog.text
    assert json.loads((out / "results.json").read_text())["tasks"] == before["tasks"]


def test_eval_cli_rejects_bad_arguments(capsys):
    from grace_trl.commands.eval import main

    assert main(["--model", "x", "--tasks", "NoSuchTask", "--output-dir", "/tmp/unused"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert main(["--model", "a=x", "--model", "a=y", "--output-dir", "/tmp/unused"]) == 2
    assert "duplicate model labels" in capsys.readouterr().err


def test_generation_check_on_tiny_model(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grace_trl.evaluation.generation_check import generation_check

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    res = generation_check(model, tok, max_new_tokens=4)
    # a random model is close to uniform over the vocabulary
    assert res["perplexity"] > 1000
    assert len(res["answers"]) == res["n_questions"] >= 50


def test_eval_cli_system_prompt_override(tiny_model_path, shared_data, tmp_path):
    """One prompt for every causal LM: literal and from-checkpoint forms agree and are recorded."""
    from grace_trl.commands.eval import main
    from grace_trl.settings import GRACESettings

    ckpt = tmp_path / "ckpt"
    GRACESettings(system_prompt="Summarise the text in one line.").save(str(ckpt))
    common = ["--model", f"tiny={tiny_model_path}", "--no-rationale", "--tasks", "STSBenchmark", "--limit", "8",
              "--data-dir", str(shared_data), "--no-html", "--samples", "0"]
    scores = {}
    for name, extra in {"literal": ["--system-prompt", "Summarise the text in one line."],
                        "from": ["--system-prompt-from", str(ckpt)],
                        "own": []}.items():
        assert main(common + extra + ["--output-dir", str(tmp_path / name)]) == 0
        results = json.loads((tmp_path / name / "results.json").read_text())
        scores[name] = results["tasks"][0]["scores"]["tiny"]
        if name != "own":
            assert results["system_prompt_override"] == "Summarise the text in one line."
            assert results["models"][0]["settings"]["system_prompt"] == "override"
            assert "(override)" in (tmp_path / name / "results.md").read_text()
            assert any("system_prompt_" in str(f) for f in (tmp_path / name / "mteb").rglob("STSBenchmark.json"))
        else:
            assert results["system_prompt_override"] is None
    assert scores["literal"] == pytest.approx(scores["from"], abs=1e-9)
    # the prompt precedes the pooled content, so a different prompt gives different embeddings
    assert scores["literal"] != pytest.approx(scores["own"], abs=1e-9)


def test_eval_cli_system_prompt_from_needs_a_grace_checkpoint(tmp_path, capsys):
    from grace_trl.commands.eval import main

    assert main(["--model", "x", "--system-prompt-from", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    assert "no grace_config.json" in capsys.readouterr().err


@pytest.mark.parametrize("spelling", ["none", "None", "null", ""])
def test_eval_system_prompt_none_means_no_system_prompt(spelling):
    from argparse import Namespace

    from grace_trl.evaluation.runner import resolve_system_prompt

    assert resolve_system_prompt(Namespace(system_prompt=spelling, system_prompt_from=None)) == (True, None)
    assert resolve_system_prompt(Namespace(system_prompt="Be brief.", system_prompt_from=None)) == (True, "Be brief.")


def test_paired_bootstrap_uses_the_pairing():
    import numpy as np

    from grace_trl.evaluation.stats import paired_spearman_difference

    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 200)
    shared = rng.normal(0, 1.0, 200)  # noise both models share: cancels in a paired comparison
    a = gold + shared + rng.normal(0, 0.2, 200)
    b = gold + shared + rng.normal(0, 0.6, 200)
    r = paired_spearman_difference(a, b, gold, n_resamples=500, seed=1)
    assert r.n == 200 and r.difference == pytest.approx(r.score_a - r.score_b)
    assert 0 < r.low < r.difference < r.high and r.p_not_better < 0.05
    same = paired_spearman_difference(a, a, gold, n_resamples=200)
    assert same.difference == same.low == same.high == 0.0 and same.p_not_better == 1.0
    with pytest.raises(ValueError, match="one value per pair"):
        paired_spearman_difference(a, b[:-1], gold)


def test_html_report_shows_settings_override_and_truncation():
    from grace_trl.evaluation.report import html_report

    results = {
        "models": [{"label": "a", "path": "out/a", "settings": {"rationale": True, "max_new_tokens": 8}},
                   {"label": "b", "path": "out/b", "settings": {"rationale": False}}],
        "tasks": [{"name": "STSBenchmark", "type": "STS", "main_score": "cosine_spearman", "reduced": False,
                   "scores": {"a": 0.5, "b": 0.4}}],
        "system_prompt_override": "Think <briefly>.",
        "samples": {"a": [{"gold": 4.0, "cosine": 0.9, "text1": "x", "text2": "y", "rationale1": "r1",
                           "rationale2": "r2", "truncated": [False, True]}]},
    }
    page = html_report(results, None)
    assert "<th>rationale</th><th>max_new_tokens</th>" in page  # settings as table columns
    assert "<td><code>out/b</code></td><td>False</td><td></td>" in page
    assert "Think &lt;briefly&gt;." in page and "System prompt override" in page
    assert page.count("truncated: hit max_new_tokens") == 1


def test_score_intervals_bootstrap_the_items():
    import numpy as np
    from scipy.stats import spearmanr

    from grace_trl.evaluation.stats import mean_interval, spearman_interval

    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 300)
    cos = gold + rng.normal(0, 2.0, 300)
    r = spearman_interval(cos, gold, n_resamples=500)
    assert r.n == 300 and r.unit == "pairs" and r.score == pytest.approx(spearmanr(cos, gold).statistic)
    assert r.low < r.score < r.high and 0.05 < r.high - r.low < 0.3
    wide = spearman_interval(cos[:30], gold[:30], n_resamples=500)
    assert wide.high - wide.low > r.high - r.low  # fewer pairs, wider interval
    hits = mean_interval(rng.random(400) < 0.7, "examples", n_resamples=500)
    assert hits.n == 400 and hits.low < hits.score < hits.high and hits.low > 0.6 and hits.high < 0.8
    with pytest.raises(ValueError, match="one value per pair"):
        spearman_interval(cos, gold[:-1])


def _report_results():
    return {
        "models": [{"label": "a", "path": "out/a", "settings": {}}, {"label": "b", "path": "out/b", "settings": {}}],
        "tasks": [{"name": "STSBenchmark", "type": "STS", "main_score": "cosine_spearman", "reduced": False,
                   "scores": {"a": 0.5, "b": 0.4}, "n": 1379, "unit": "pairs",
                   "intervals": {"a": {"score": 0.5, "low": 0.4512, "high": 0.5531},
                                 "b": {"score": 0.4, "low": 0.35, "high": 0.45}}},
                  {"name": "SciFact", "type": "Retrieval", "main_score": "ndcg_at_10", "reduced": False,
                   "scores": {"a": 0.6, "b": 0.7}, "n": 300, "unit": "queries",
                   "intervals": {"a": {"score": 0.6, "low": 0.55, "high": 0.65},
                                 "b": {"score": 0.7, "low": 0.66, "high": 0.74}}}],
    }


def test_html_report_shows_n_and_intervals():
    from grace_trl.evaluation.report import html_report, markdown_tables

    page = html_report(_report_results(), None)
    assert "n = 1,379 pairs" in page and "n = 300 queries" in page
    assert "45.12 – 55.31" in page  # the interval under the score, ×100 like the score
    assert "95% interval" in page and "scipy.stats.bootstrap" in page
    md = markdown_tables(_report_results())
    assert "n = 1,379 pairs" in md and "50.00 (45.12 – 55.31)" in md


def test_plot_legend_does_not_cover_bars():
    import matplotlib

    matplotlib.use("Agg")
    from grace_trl.evaluation.report import bar_plot

    results = _report_results()
    results["models"] += [{"label": f"model {i}", "path": "x", "settings": {}} for i in range(4)]
    fig = bar_plot(results)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    legend = ax.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(ax.get_window_extent(renderer))  # outside the axes: no bar can be under it
    for bar in ax.patches:
        assert not legend.overlaps(bar.get_window_extent(renderer))


def test_eval_checks_task_data_before_loading_a_model(tmp_path, capsys):
    from grace_trl.commands.eval import main
    from grace_trl.evaluation.runner import canonical_tasks

    assert canonical_tasks("stsb,STS12") == ["STSBenchmark", "STS12"]  # any mteb task name is accepted
    empty = tmp_path / "data"
    empty.mkdir()
    # "no-such-model" would fail to load: the data folder is reported first, in one line
    assert main(["--model", "no-such-model", "--tasks", "STSBenchmark", "--data-dir", str(empty),
                 "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(empty / "STSBenchmark") in err[0] and "--data-dir" in err[0]
    assert main(["--model", "no-such-model", "--tasks", "STS12", "--limit", "5",
                 "--output-dir", str(tmp_path / "out")]) == 2
    assert "--limit applies to the bundled offline tasks only" in capsys.readouterr().err


def test_prompt_override_leaves_the_encoder_settings_alone(tiny_model_path):
    """The override reaches encode() as system_prompt=; the encoder keeps the checkpoint's settings."""
    import copy

    import numpy as np

    from grace_trl.encoder import GRACEEncoder
    from grace_trl.evaluation.mteb_wrapper import GRACEMTEBEncoder

    encoder = GRACEEncoder.from_pretrained(tiny_model_path, device="cpu")
    before = copy.deepcopy(encoder.settings)
    texts = ["A man is playing a guitar.", "Cats sleep a lot."]
    wrapped = GRACEMTEBEncoder(encoder, use_rationale=False, system_prompt="Summarise the text in one line.",
                               show_progress_bar=False)
    got = wrapped.encode([{"text": texts}], task_metadata=None, hf_split="test", hf_subset="default")
    assert encoder.settings == before
    want = encoder.encode(texts, use_rationale=False, system_prompt="Summarise the text in one line.",
                          show_progress_bar=False)
    own = encoder.encode(texts, use_rationale=False, show_progress_bar=False)
    assert np.allclose(got, want) and not np.allclose(got, own)


def test_no_module_writes_into_an_encoders_settings():
    import ast

    package = Path(__file__).resolve().parents[1] / "grace_trl"
    writes = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            for target in targets:
                if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute)
                        and target.value.attr == "settings"):
                    writes.append(f"{path.relative_to(package)}:{node.lineno}")
    assert not writes, f"settings overridden by assignment instead of encode(system_prompt=...): {writes}"


def test_eval_cli_on_a_checkpoint_the_trainer_wrote(tiny_model_path, shared_data, tmp_path, recwarn):
    """A GRACE checkpoint also holds modules.json; it must still be evaluated through GRACEEncoder, with rationales."""
    from datasets import Dataset

    from grace_trl import GRACEConfig
    from grace_trl.commands.eval import main
    from grace_trl.trainer import GRACETrainer

    ckpt = tmp_path / "grace-sup"
    args = GRACEConfig(output_dir=str(ckpt), use_cpu=True, bf16=False, report_to="none", num_generations=2,
                       per_device_train_batch_size=2, max_completion_length=2)
    data = Dataset.from_dict({"query": ["q"], "positive": ["p"], "negatives": [["n"]]})
    GRACETrainer(tiny_model_path, args=args, train_dataset=data).save_model(str(ckpt))
    assert (ckpt / "modules.json").is_file() and (ckpt / "grace_config.json").is_file()
    out = tmp_path / "eval"
    assert main(["--model", f"grace={ckpt}", "--tasks", "STSBenchmark", "--limit", "4", "--data-dir",
                 str(shared_data), "--no-html", "--samples", "0", "--output-dir", str(out)]) == 0
    (model,) = json.loads((out / "results.json").read_text())["models"]
    assert model["kind"] == "grace" and model["settings"]["rationale"] is True
    assert model["settings"]["max_new_tokens"] == 2
    # a few pairs make a small embedding cache (mteb's default file holds 100,000 vectors: 230 MB apparent size)
    vectors = list((out / "embedding_cache").rglob("vectors.npy"))
    assert vectors and all(v.stat().st_size < 5_000_000 for v in vectors)
    # mteb's cache bookkeeping warnings stay out of the command's output
    assert not [w for w in recwarn if "/mteb/" in w.filename], [str(w.message) for w in recwarn]


def test_eval_cli_shows_mteb_errors_only():
    import logging

    from grace_trl.commands.eval import _quiet_mteb

    def record(name, level):
        return logging.LogRecord(name, level, __file__, 1, "message", None, None)

    assert not _quiet_mteb(record("mteb.models.cache_wrappers.cache_wrapper", logging.INFO))
    assert not _quiet_mteb(record("mteb.abstasks.abstask", logging.WARNING))
    assert _quiet_mteb(record("mteb.evaluate", logging.ERROR))
    assert _quiet_mteb(record("grace_trl.evaluation.runner", logging.INFO))


def test_mteb_cache_never_returns_another_reductions_score(tiny_model_path, shared_data, tmp_path):
    """mteb reuses a cached result when the dataset revision matches: each reduction must have its own."""
    import mteb

    from grace_trl.encoder import GRACEEncoder
    from grace_trl.evaluation.mteb_wrapper import GRACEMTEBEncoder

    model = GRACEMTEBEncoder(GRACEEncoder.from_pretrained(tiny_model_path, device="cpu"), use_rationale=False,
                             show_progress_bar=False)
    cache = mteb.ResultCache(tmp_path / "cache")

    def score(limit, cache):
        task = get_local_task("STSBenchmark", data_dir=shared_data, limit=limit)
        assert task.reduced is (limit is not None)  # known before the data loads
        (result,) = mteb.evaluate(model, [task], cache=cache, show_progress_bar=False).task_results
        return result

    official = mteb.get_task("STSBenchmark").metadata.revision
    four, six = score(4, cache), score(6, cache)
    assert four.dataset_revision == f"{official}+reduced:limit=4,seed=42"
    assert six.dataset_revision == f"{official}+reduced:limit=6,seed=42"
    assert six.get_score() == pytest.approx(score(6, mteb.ResultCache(tmp_path / "fresh")).get_score(), abs=1e-9)
    assert six.get_score() != pytest.approx(four.get_score(), abs=1e-6)
    assert get_local_task("STSBenchmark", data_dir=shared_data).metadata.revision == official
    bank = get_local_task("banking77", data_dir=shared_data, samples_per_label=2)
    assert bank.reduced and "samples_per_label=2" in bank.metadata.revision
    scifact = get_local_task("scifact", data_dir=shared_data, limit=3, n_distractors=9)
    assert "distractors=9" in scifact.metadata.revision


@pytest.mark.parametrize("limit", ["1", "2"])
def test_eval_cli_rejects_a_limit_too_small_before_loading_a_model(limit, shared_data, tmp_path, capsys):
    from grace_trl.commands.eval import main

    # "no-such-model" would fail to load: the limit is reported first, in one line
    assert main(["--model", "no-such-model", "--tasks", "STSBenchmark", "--limit", limit, "--data-dir",
                 str(shared_data), "--output-dir", str(tmp_path / "out")]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "limit must be >= 3" in err


def test_single_task_report_says_only_what_it_shows():
    """One STS task of 3 pairs: no interval to show, no "Avg" bar repeating "STS", the reduction in words."""
    import matplotlib

    matplotlib.use("Agg")
    from grace_trl.evaluation.report import bar_plot, html_report, markdown_tables, text_table

    results = {"models": [{"label": "grace", "path": "out/g", "settings": {}}],
               "tasks": [{"name": "STSBenchmark", "type": "STS", "main_score": "cosine_spearman", "reduced": True,
                          "reduction": {"pairs": 3, "full_pairs": 1379, "seed": 42}, "scores": {"grace": 0.5},
                          "n": 3, "unit": "pairs",
                          "intervals": {"grace": {"score": 0.5, "low": None, "high": None}}}]}
    page = html_report(results, None)
    assert "Under each score" not in page and "No 95% interval" in page
    assert "<th>Avg</th>" not in page and "{" not in page.split("<body>")[1]
    assert "STSBenchmark reduction: pairs=3, full_pairs=1,379, seed=42" in page
    assert [t.get_text() for t in bar_plot(results).axes[0].get_xticklabels()] == ["STS"]
    assert "Avg" not in text_table(results) and "Avg |" not in markdown_tables(results)
