"""Training curves: the per-step GRACE metrics as a CSV table and a PNG plot next to the checkpoint."""

from __future__ import annotations

import csv
import os

CURVE_KEYS = ("reward", "grace/pos_sim", "grace/neg_sim", "grace/margin", "grace/consistency", "grace/cross",
              "grace/truncation_rate", "grace/rationale_length", "loss", "step_time")


def training_rows(log_history: list[dict]) -> list[dict]:
    """One row per logged training step with the GRACE metrics that were present."""
    rows = []
    for entry in log_history:
        if "reward" not in entry or "step" not in entry:
            continue
        row = {"step": int(entry["step"])}
        for key in CURVE_KEYS:
            if key in entry:
                row[key] = float(entry[key])
        rows.append(row)
    return rows


def save_training_curves(log_history: list[dict], output_dir: str) -> tuple[str, str | None]:
    """Write ``training_curves.csv`` and (matplotlib permitting) ``training_curves.png``."""
    rows = training_rows(log_history)
    os.makedirs(output_dir, exist_ok=True)
    csv_path = os.path.join(output_dir, "training_curves.csv")
    keys = ["step"] + [k for k in CURVE_KEYS if any(k in r for r in rows)]
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    if not rows:
        return csv_path, None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [
        ("mean GRACE reward", ["reward"]),
        ("cosine similarity", ["grace/pos_sim", "grace/neg_sim", "grace/margin"]),
        ("rationales", ["grace/truncation_rate"]),
    ]
    for ax, (title, names) in zip(axes, panels):
        for name in names:
            ys = [r.get(name, float("nan")) for r in rows]
            ax.plot(steps, ys, marker=".", label=name.replace("grace/", ""))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png_path = os.path.join(output_dir, "training_curves.png")
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return csv_path, png_path
