"""Two real processes under ``accelerate launch`` with DeepSpeed ZeRO-2/3 on CPU (gloo, DS_ACCELERATOR=cpu).

Runs the shipped accelerate configs and the real entry module; checks a finite loss on every
step, that the weights moved, that the GRACE settings were saved next to the checkpoint, and that
every rank's rewards and logged similarities equal a single-process replay of the same rollouts
and anchors with the same weights (so a rank scoring against another rank's anchors, or a wrong
gather, fails).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_argv(model: str, out: Path, extra=()) -> list[str]:
    return ["--model_name_or_path", model, "--dataset_name", "sample-nli", "--max_train_samples", "8",
            "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "8",
            "--max_steps", "2", "--use_cpu", "true", "--bf16", "false", "--output_dir", str(out),
            "--save_strategy", "steps", "--save_steps", "2", "--report_to", "none", "--logging_steps", "1",
            "--learning_rate", "1e-3", "--seed", "0",
            # random tiny model: bias EOS while sampling so rollouts differ in length and reward
            "--generation_kwargs", json.dumps({"sequence_bias": [[[2], 9.0]]}), *extra]


def _launch(config: str, train_argv: list[str], record_dir: Path | None = None):
    """``accelerate launch`` the entry module on 2 processes; with ``record_dir``, through the recording wrapper."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    entry = (["-m", "grace_trl.commands.train"] if record_dir is None
             else [str(ROOT / "tests" / "support" / "recorded_train.py"), str(record_dir)])
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes" / "accelerate_configs" / config), "--num_processes", "2",
           "--main_process_port", str(_free_port()), "--mixed_precision", "no", *entry, *train_argv]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _weights(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# what GRACEReward logs per generation; each rank's value must equal the single-process one
SIMILARITIES = ("grace/pos_sim", "grace/neg_sim", "grace/margin", "grace/consistency", "grace/cross", "grace/raw")


def _assert_ranks_match_a_single_process_replay(train_argv_for, records: Path, weights: list[str], log_history):
    """Replay each generation's rollouts and anchors (rank 0's rows, then rank 1's, as gathered) in one
    process with the weights of that step; every rank's rewards and logged values must equal the replay's.
    """
    from support.recorded_train import ReplayTrainer

    from grace_trl.commands.train import parse_args
    from grace_trl.data import load_grace_dataset

    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in range(2)]
    assert [len(r) for r in ranks] == [len(weights)] * 2, "one record per generation and rank"
    for step, model in enumerate(weights):
        recs = [ranks[r][step] for r in range(2)]
        assert [(x["step"], x["rank"], x["world_size"]) for x in recs] == [(step, 0, 2), (step, 1, 2)]
        assert recs[0]["inputs"] != recs[1]["inputs"], "both ranks scored the same rows"

        def joined(key, recs=recs):
            return recs[0][key] + recs[1][key]

        script_args, args, _ = parse_args(train_argv_for(model, step))
        dataset = load_grace_dataset(script_args.dataset_name, mode=args.mode, num_negatives=args.num_negatives,
                                     limit=script_args.max_train_samples)
        replay = ReplayTrainer(model, args=args, train_dataset=dataset, anchor_texts=joined("anchor_texts"),
                               anchor_completion_ids=joined("anchor_completion_ids"))
        assert replay.accelerator.num_processes == 1
        replay.model.train()
        rewards = replay._calculate_rewards(joined("inputs"), joined("prompts"), joined("completions"),
                                            joined("completion_ids")).cpu()
        assert replay._last_anchor_texts == joined("anchor_texts")
        logged = {name: values[-1] for name, values in replay._pending_metrics.items() if values}
        assert set(SIMILARITIES) <= set(logged), sorted(logged)
        assert rewards.std() > 1e-3, "rewards all equal: the comparison could not tell rollouts apart"
        for rec in recs:
            where = f"step {step}, rank {rec['rank']}"
            torch.testing.assert_close(torch.tensor(rec["rewards"]), rewards, atol=1e-4, rtol=1e-4,
                                       msg=lambda m, where=where: f"{where}: {m}")
            assert set(rec["logged"]) == set(logged), where
            for name, value in logged.items():
                assert rec["logged"][name] == pytest.approx(value, abs=1e-5), f"{where}: {name}"
        # what the training log shows: TRL's mean over the ranks' values, and the mean gathered reward
        entry = next(h for h in log_history if h.get("step") == step + 1 and "loss" in h)
        for name in SIMILARITIES:
            assert entry[name] == pytest.approx(logged[name], abs=1e-5), f"step {step}: logged {name}"
        assert entry["reward"] == pytest.approx(float(rewards.mean()), abs=1e-4), f"step {step}: logged reward"


@pytest.mark.slow
@pytest.mark.parametrize("config", ["zero2.yaml", "zero3.yaml"])
def test_two_process_deepspeed_training(tmp_path, tiny_model_path, config):
    out, records = tmp_path / "run", tmp_path / "records"
    # 2 groups per rank; a checkpoint after step 1 holds the weights that scored the second generation
    extra = ["--per_device_train_batch_size", "4", "--save_steps", "1"]
    _launch(config, _train_argv(tiny_model_path, out, extra), record_dir=records)
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(float(v))) for v in losses)
    assert any("grace/pos_sim" in h for h in state["log_history"])
    before, after = _weights(Path(tiny_model_path)), _weights(out)
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k].to(before[k].dtype))]
    assert changed, "no weight changed after two ZeRO steps"
    assert all(torch.isfinite(after[k]).all() for k in after)
    assert (out / "grace_config.json").is_file()
    _assert_ranks_match_a_single_process_replay(
        lambda model, step: _train_argv(model, tmp_path / f"replay{step}", extra), records,
        [tiny_model_path, str(out / "checkpoint-1")], state["log_history"])


@pytest.mark.slow
def test_zero3_with_lora_trains_the_adapter(tmp_path, tiny_model_path):
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    _launch("zero3.yaml", _train_argv(tiny_model_path, out, [
        "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj"]))
    adapter = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b), "LoRA B matrices are still zero: no update reached them"
    assert (out / "grace_config.json").is_file()


@pytest.mark.slow
def test_grace_trl_train_launches_accelerate_itself(tmp_path, tiny_model_path):
    """`grace-trl train --accelerate_config zero2 --num_processes 2`, as `trl grpo` takes them."""
    out = tmp_path / "run"
    env = dict(os.environ, DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "grace_trl.cli", "train", "--accelerate_config", "zero2", "--num_processes", "2",
           "--main_process_port", str(_free_port()), "--mixed_precision", "no",
           "--model_name_or_path", tiny_model_path, "--dataset_name", "sample-nli", "--max_train_samples", "8",
           "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "4",
           "--max-steps", "1", "--use_cpu", "true", "--bf16", "false", "--output_dir", str(out),
           "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert (out / "grace_config.json").is_file() and (out / "modules.json").is_file()
    assert proc.stderr.count("training rows: 8") == 2  # one line per process: both ran the entry module
    # a mistyped launch option is neither silently matched nor a traceback
    bad = subprocess.run([*cmd[:4], "--num_process", "2", "--use_cpu", "true", "--output_dir", str(out)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("grace-trl train: error: unrecognized arguments: --num_process")
