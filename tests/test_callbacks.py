import csv

from grace_trl.callbacks import save_training_curves


def test_curves_written_from_log_history(tmp_path):
    history = [{"step": 1, "reward": -0.5, "grace/pos_sim": 0.8, "grace/neg_sim": 0.7, "loss": 0.0},
               {"step": 2, "reward": -0.2, "grace/pos_sim": 0.85, "grace/neg_sim": 0.6, "loss": 0.1},
               {"step": 2, "train_runtime": 3.0}]
    csv_path, png_path = save_training_curves(history, str(tmp_path))
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["step"] for r in rows] == ["1", "2"]
    assert float(rows[1]["reward"]) == -0.2 and float(rows[0]["grace/pos_sim"]) == 0.8
    assert png_path and (tmp_path / "training_curves.png").stat().st_size > 1000


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(worker, tmp_path, *extra):
    """Run ``worker`` on two real gloo processes; each writes rank{r}.json into tmp_path."""
    import json

    import torch.multiprocessing as mp

    mp.spawn(worker, args=(_free_port(), str(tmp_path), *extra), nprocs=2, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_time_budget_is_decided_by_the_main_process_and_counts_the_resumed_time(tmp_path):
    from support.two_ranks import budget_worker

    # the main process has spent 2 minutes (resumed from a checkpoint), the other rank's clock says 0
    (tmp_path / "a").mkdir()
    assert _two_ranks(budget_worker, tmp_path / "a", [120.0, 0.0]) == [{"stop": True, "save": True}] * 2
    # and the other way round: the main process is within budget, so nobody stops
    (tmp_path / "b").mkdir()
    assert _two_ranks(budget_worker, tmp_path / "b", [0.0, 120.0]) == [{"stop": False, "save": False}] * 2


def test_a_failure_on_the_main_process_is_raised_on_every_rank(tmp_path):
    from support.two_ranks import failing_main_worker, result_worker

    main, other = _two_ranks(failing_main_worker, tmp_path)
    assert main == "FileNotFoundError: STSBenchmark/sts-dev.csv is missing"
    assert other == "RuntimeError: the main process failed (FileNotFoundError: STSBenchmark/sts-dev.csv is missing)"
    assert _two_ranks(result_worker, tmp_path) == [{"spearman": 0.5, "rank": 0}] * 2


def test_close_process_group_leaves_no_group_open_and_is_safe_to_repeat(tmp_path):
    import torch.distributed as dist

    from grace_trl.distributed import close_process_group

    close_process_group()  # no group: nothing to do
    for barrier in (False, True):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / f'store{barrier}'}", rank=0, world_size=1)
        try:
            assert dist.is_initialized()
            close_process_group(barrier=barrier)
            assert not dist.is_initialized()
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()


def test_progress_bar_counts_the_time_budget_not_max_steps():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from grace_trl.callbacks import GRACEProgressCallback

    args = TrainingArguments(output_dir="unused", max_steps=1000, report_to="none")
    state, control = TrainerState(max_steps=1000), TrainerControl()
    bar = GRACEProgressCallback(minutes=10)
    bar.on_train_begin(args, state, control)
    assert bar.training_bar.total == 600 and bar.training_bar.unit == "s"
    state.global_step = 21
    bar.on_step_end(args, state, control)
    shown = str(bar.training_bar)
    assert "step 21" in shown and "/600 s" in shown and "1000" not in shown
    bar.on_train_end(args, state, control)


def test_log_lines_are_short_and_numeric():
    from grace_trl.callbacks import format_log

    line = format_log({"loss": 0.00123456, "grad_norm": 1.5, "learning_rate": 1e-5, "num_tokens": 12345.0,
                       "completions/mean_length": 60.0, "reward": 0.41234, "reward_std": 0.05, "grace/pos_sim": 0.8,
                       "grace/neg_sim": 0.4, "grace/margin": 0.4, "grace/truncation_rate": 0.25,
                       "step_time": 28.07, "epoch": 0.0333, "total_flos": 0.0}, step=5)
    assert line == ("step 5 (epoch 0.03): reward 0.4123, reward std 0.05, pos sim 0.8, neg sim 0.4, margin 0.4, "
                    "truncated 0.25, loss 0.001235, s/step 28.07")
    assert format_log({"eval_sts_spearman": 31.2, "eval_sts_runtime": 130.4, "epoch": 0.0}, step=0) == \
        "dev-set evaluation at step 0 (130 s): sts_spearman 31.2"
