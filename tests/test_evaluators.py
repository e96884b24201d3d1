"""Dev-set embedding evaluators: data they read, the scores they compute, errors on bad input."""

import numpy as np
import pytest

from grace_trl.encoder import Rationale
from grace_trl.evaluation.evaluators import RetrievalEvaluator, STSEvaluator, build_evaluator
from grace_trl.evaluation.tasks import load_sts_benchmark


class LookupEncoder:
    """Embeds each text as a fixed vector: the evaluators' arithmetic against known answers."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def encode(self, texts, batch_size=16, max_new_tokens=None, use_rationale=True, return_rationales=False,
               show_progress_bar=False):
        self.calls.append(use_rationale)
        vecs = np.stack([np.asarray(self.table[t], dtype=np.float32) for t in texts])
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        if return_rationales:
            return vecs, [Rationale("r", [1, 2, 3], truncated=(i % 2 == 0)) for i in range(len(texts))]
        return vecs


def test_sts_spearman_follows_the_similarity_order():
    pairs = [("a", "b", 5.0), ("a", "c", 3.0), ("a", "d", 0.0)]
    angles = {"a": 0.0, "b": 0.1, "c": 0.8, "d": 1.5}
    enc = LookupEncoder({k: [np.cos(v), np.sin(v)] for k, v in angles.items()})
    out = STSEvaluator(pairs, without_rationale=True)(enc)
    assert out["spearman"] == pytest.approx(100.0) and out["spearman_no_rationale"] == pytest.approx(100.0)
    assert enc.calls == [True, False] and out["rationale_length"] == 3.0
    reversed_pairs = [(a, b, 5.0 - s) for a, b, s in pairs]
    assert STSEvaluator(reversed_pairs)(enc)["spearman"] == pytest.approx(-100.0)


def test_retrieval_ndcg_is_perfect_for_the_right_ranking_and_lower_otherwise():
    table = {"q1": [1, 0, 0], "q2": [0, 1, 0], "d1": [1, 0.1, 0], "d2": [0.1, 1, 0], "d3": [0, 0, 1]}
    enc = LookupEncoder(table)
    ev = RetrievalEvaluator(queries={"q1": "q1", "q2": "q2"}, corpus={"d1": "d1", "d2": "d2", "d3": "d3"},
                            qrels={"q1": {"d1": 1}, "q2": {"d2": 1}})
    assert ev(enc)["ndcg_at_10"] == pytest.approx(100.0)
    wrong = RetrievalEvaluator(queries={"q1": "q1", "q2": "q2"}, corpus={"d1": "d1", "d2": "d2", "d3": "d3"},
                               qrels={"q1": {"d3": 1}, "q2": {"d3": 1}})
    assert wrong(enc)["ndcg_at_10"] < 60.0


def test_bad_evaluator_input_is_named():
    with pytest.raises(ValueError, match="pair 1"):
        STSEvaluator([("a", "b", 1.0), ("a", None, 2.0)])
    with pytest.raises(ValueError, match="not in the corpus"):
        RetrievalEvaluator(queries={"q": "q"}, corpus={"d": "d"}, qrels={"q": {"x": 1}})
    with pytest.raises(ValueError, match="embedding_evaluator must be one of"):
        build_evaluator("sts-test")


def test_committed_dev_sample_is_dev_data_only(shared_data):
    sample = STSEvaluator.from_sample().pairs
    assert len(sample) == 200
    dev = set(load_sts_benchmark(shared_data, split="dev"))
    test = {(a, b) for a, b, _ in load_sts_benchmark(shared_data, split="test")}
    assert set(sample) <= dev and not {(a, b) for a, b, _ in sample} & test


def test_dev_evaluators_read_dev_splits(shared_data):
    sts = build_evaluator("sts-dev", shared_data, limit=50, seed=0)
    assert len(sts.pairs) == 50 and set(sts.pairs) <= set(load_sts_benchmark(shared_data, split="dev"))
    ret = build_evaluator("retrieval-dev", shared_data, limit=5, seed=0)
    assert len(ret.queries) == 5 and ret.info["full_queries"] == 809  # SciFact train queries, not the 300 test


def test_training_with_the_sts_evaluator_does_not_import_mteb(tiny_model_path):
    """mteb (and polars) take seconds to import and belong to `grace-trl eval`, not to a training process."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import grace_trl.commands.train, grace_trl.trainer\n"
            "from grace_trl.encoder import GRACEEncoder\n"
            "from grace_trl.evaluation.evaluators import build_evaluator\n"
            "evaluator = build_evaluator('sts-dev-sample', limit=3, max_new_tokens=2)\n"
            f"evaluator(GRACEEncoder.from_pretrained({tiny_model_path!r}, device='cpu'))\n"
            "print(sorted(m for m in ('mteb', 'polars') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
