"""Two real processes under ``accelerate launch`` with DeepSpeed ZeRO-2/3 on CPU (gloo, DS_ACCELERATOR=cpu).

Runs the shipped accelerate configs and the real entry module; checks a finite loss on every
step, that the weights moved, and that the GRACE settings were saved next to the checkpoint.
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


def _launch(config: str, model: str, out: Path, extra=()):
    env = dict(os.environ, DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes" / "accelerate_configs" / config), "--num_processes", "2",
           "--main_process_port", str(_free_port()), "--mixed_precision", "no", "-m", "grace_trl.commands.train",
           "--model_name_or_path", model, "--dataset_name", "sample-nli", "--max_train_samples", "8",
           "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "8",
           "--max_steps", "2", "--use_cpu", "true", "--bf16", "false", "--output_dir", str(out),
           "--save_strategy", "steps", "--save_steps", "2", "--report_to", "none", "--logging_steps", "1",
           "--learning_rate", "1e-3", "--seed", "0",
           # random tiny model: bias EOS while sampling so rollouts differ in length and reward
           "--generation_kwargs", json.dumps({"sequence_bias": [[[2], 9.0]]}), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _weights(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("config", ["zero2.yaml", "zero3.yaml"])
def test_two_process_deepspeed_training(tmp_path, tiny_model_path, config):
    out = tmp_path / "run"
    _launch(config, tiny_model_path, out)
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(float(v))) for v in losses)
    assert any("grace/pos_sim" in h for h in state["log_history"])
    before, after = _weights(Path(tiny_model_path)), _weights(out)
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k].to(before[k].dtype))]
    assert changed, "no weight changed after two ZeRO steps"
    assert all(torch.isfinite(after[k]).all() for k in after)
    assert (out / "grace_config.json").is_file()


@pytest.mark.slow
def test_zero3_with_lora_trains_the_adapter(tmp_path, tiny_model_path):
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    _launch("zero3.yaml", tiny_model_path, out,
            extra=["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj",
                   "v_proj"])
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
