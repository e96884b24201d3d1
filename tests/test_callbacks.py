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
