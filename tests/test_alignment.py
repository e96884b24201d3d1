"""Each rollout's anchors are its own row's query and negatives, on 1 and 2 processes and with
``steps_per_generation > 1``; per-rank rewards and logged similarities equal a single-process replay.

The training itself runs in ``tests/support/alignment_run.py`` (real GRACETrainer, greedy anchors):
it compares every anchor vector with a reference built from the row's own text, one prompt at a time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


def _assert_aligned(log):
    assert log, "no generation was checked"
    for entry in log:
        # a misplaced anchor would be off by the distance between two rows' vectors, far above the tolerance
        assert entry["row_gap"] > 100 * TOL, entry
        assert entry["query_err"] < TOL and entry["negative_err"] < TOL, entry


def test_anchors_belong_to_their_rows_with_several_steps_per_generation(tmp_path, tiny_model_path):
    from support.alignment_run import RecordingTrainer, distinct_rows, make_args

    # 4 rollouts per step, 2 steps per generation: each generation covers 4 groups across 2 optimizer steps
    args = make_args(str(tmp_path / "out"), per_device=4, steps_per_generation=2, max_steps=4)
    trainer = RecordingTrainer(tiny_model_path, args=args, train_dataset=distinct_rows(16))
    trainer.train()
    assert len(trainer._alignment_log) == 2  # two generations of 8 rollouts each
    _assert_aligned(trainer._alignment_log)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_align_anchors_and_match_a_single_process_replay(tmp_path, tiny_model_path):
    from support.alignment_run import COMPONENTS, RecordingTrainer, distinct_rows, make_args

    out = tmp_path / "ddp"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(ROOT / "tests" / "support" / "alignment_run.py"), tiny_model_path, str(out),
           "2", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for r in ranks:
        _assert_aligned(r["alignment"])
    assert ranks[0]["inputs"] != ranks[1]["inputs"]  # each rank scored its own rows

    # replay the same rollouts (rank 0's, then rank 1's, as they are gathered) in one process, same weights
    inputs = ranks[0]["inputs"] + ranks[1]["inputs"]
    ids = ranks[0]["completion_ids"] + ranks[1]["completion_ids"]
    trainer = RecordingTrainer(tiny_model_path, args=make_args(str(tmp_path / "single"), 4, 2),
                               train_dataset=distinct_rows(16))
    assert trainer.accelerator.num_processes == 1
    trainer.model.train()
    tok = trainer.grace_tokenizer
    completions = [[{"role": "assistant", "content": tok.decode(c, skip_special_tokens=True)}] for c in ids]
    rewards = trainer._calculate_rewards(inputs, [row["prompt"] for row in inputs], completions, ids)
    _assert_aligned(trainer._alignment_log)
    for r in ranks:
        torch.testing.assert_close(torch.tensor(r["rewards"]), rewards.cpu(), atol=1e-4, rtol=1e-4)
        assert set(r["logged"]) == {f"grace/{n}" for n in COMPONENTS}
        for name, value in r["logged"].items():
            assert value == pytest.approx(trainer._first["logged"][name], abs=1e-5), name
