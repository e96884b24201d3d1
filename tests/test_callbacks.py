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
