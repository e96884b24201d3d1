"""Training curves: the per-step GRACE metrics and dev-set embedding scores as a CSV table and a PNG plot.

Written by :class:`TrainingCurvesCallback` at every save and at the end of training, so scripts that
use :class:`~grace_trl.GRACETrainer` directly get them too.
"""

from __future__ import annotations

import csv
import logging
import os
import time

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

logger = logging.getLogger(__name__)

CURVE_KEYS = ("reward", "grace/pos_sim", "grace/neg_sim", "grace/margin", "grace/consistency", "grace/cross",
              "grace/truncation_rate", "grace/rationale_length", "grace/contrastive_loss", "loss", "step_time")
# dev-set embedding scores logged by the trainer's evaluator (eval_<name>_<metric>)
EVAL_SUFFIXES = ("_spearman", "_spearman_no_rationale", "_ndcg_at_10", "_rationale_length", "_truncation_rate")


def _eval_keys(entry: dict) -> list[str]:
    return [k for k in entry if k.startswith("eval_") and k.endswith(EVAL_SUFFIXES)]


def training_rows(log_history: list[dict]) -> list[dict]:
    """One row per logged step: the GRACE metrics and any dev-set embedding score logged at that step."""
    rows: dict[int, dict] = {}
    for entry in log_history:
        if "step" not in entry:
            continue
        keys = [k for k in CURVE_KEYS if k in entry] if "reward" in entry else []
        keys += _eval_keys(entry)
        if not keys:
            continue
        row = rows.setdefault(int(entry["step"]), {"step": int(entry["step"])})
        for key in keys:
            row[key] = float(entry[key])
    return [rows[s] for s in sorted(rows)]


def save_training_curves(log_history: list[dict], output_dir: str) -> tuple[str, str | None]:
    """Write ``training_curves.csv`` and (matplotlib permitting) ``training_curves.png``."""
    rows = training_rows(log_history)
    os.makedirs(output_dir, exist_ok=True)
    csv_path = os.path.join(output_dir, "training_curves.csv")
    eval_keys = sorted({k for r in rows for k in r if k.startswith("eval_")})
    keys = ["step"] + [k for k in CURVE_KEYS if any(k in r for r in rows)] + eval_keys
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    if not rows:
        return csv_path, None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("mean GRACE reward", ["reward"]),
        ("cosine similarity", ["grace/pos_sim", "grace/neg_sim", "grace/margin"]),
        ("rationales", ["grace/truncation_rate"]),
    ]
    scores = [k for k in eval_keys if k.endswith(("_spearman", "_spearman_no_rationale", "_ndcg_at_10"))]
    if scores:
        panels.append(("dev-set embedding score", scores))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (title, names) in zip(axes, panels):
        for name in names:
            pts = [(r["step"], r[name]) for r in rows if name in r]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name.replace("grace/", ""))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = os.path.join(output_dir, "training_curves.png")
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return csv_path, png_path


class TrainingCurvesCallback(TrainerCallback):
    """Keeps ``training_curves.csv/png`` in ``output_dir`` current (main process only)."""

    def _write(self, args, state):
        if state.is_world_process_zero:
            save_training_curves(state.log_history, args.output_dir)

    def on_save(self, args, state, control, **kwargs):
        self._write(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self._write(args, state)


class TimeBudgetCallback(TrainerCallback):
    """Ends training after ``minutes`` of wall clock (checked after each optimiser step), then saves.

    The main process's clock decides for every rank (ranks deciding alone could stop while another
    starts a step, and hang it). The time spent so far is kept in the trainer state, so a run resumed
    from a checkpoint counts the minutes spent before it.
    """

    STATE_KEY = "GRACETimeBudget"  # in TrainerState.stateful_callbacks, saved with every checkpoint

    def __init__(self, minutes: float):
        self.minutes = float(minutes)
        self.start = None
        self.spent_before = 0.0

    def spent_seconds(self) -> float:
        return self.spent_before + (time.monotonic() - self.start if self.start is not None else 0.0)

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(self.STATE_KEY) if state.global_step > 0 else None
        self.spent_before = float(saved["spent_seconds"]) if isinstance(saved, dict) else 0.0
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        from .distributed import main_process_decides

        if self.start is None:
            return control
        spent = self.spent_seconds()
        state.stateful_callbacks[self.STATE_KEY] = {"spent_seconds": spent}
        if main_process_decides(spent >= 60.0 * self.minutes):
            logger.info("max_train_minutes=%s reached at step %d: stopping", self.minutes, state.global_step)
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"
            if self.minutes and args.eval_strategy != "no":
                control.should_evaluate = True
        return control


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# what one training log line shows (label, key); every logged value stays in trainer_state.json and the curves
LOG_LINE_KEYS = (("reward", "reward"), ("reward std", "reward_std"), ("pos sim", "grace/pos_sim"),
                 ("neg sim", "grace/neg_sim"), ("margin", "grace/margin"), ("truncated", "grace/truncation_rate"),
                 ("loss", "loss"), ("s/step", "step_time"))


def format_log(logs: dict, step: int) -> str:
    """One short line per log: the step's main GRACE metrics, a dev-set score, or the run summary."""
    logs = {k: v for k, v in logs.items() if k != "total_flos"}
    epoch = f" (epoch {logs['epoch']:.2f})" if isinstance(logs.get("epoch"), float) else ""
    if "reward" in logs:
        shown = [f"{label} {_num(logs[key])}" for label, key in LOG_LINE_KEYS if key in logs]
        return f"step {step}{epoch}: " + ", ".join(shown)
    evals = {k: v for k, v in logs.items() if k.startswith("eval_")}
    if evals:
        runtime = next((v for k, v in evals.items() if k.endswith("_runtime")), None)
        scores = ", ".join(f"{k.removeprefix('eval_')} {_num(v)}" for k, v in evals.items()
                           if not k.endswith(("_runtime", "_per_second")))
        took = f" ({runtime:.0f} s)" if isinstance(runtime, (int, float)) else ""
        return f"dev-set evaluation at step {step}{took}: {scores}"
    return f"step {step}{epoch}: " + ", ".join(f"{k} {_num(v)}" for k, v in logs.items() if k != "epoch")


class GRACEProgressCallback(ProgressCallback):
    """transformers' progress bar, measured against ``max_train_minutes`` when a budget ends the run.

    With a budget the bar counts seconds of the budget and shows the steps done, instead of counting to a
    ``max_steps`` the run will not reach (and an ETA of hours). Log lines are short, numeric and one per log.
    """

    def __init__(self, minutes: float | None = None):
        super().__init__()
        self.minutes = float(minutes) if minutes else None
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.minutes:
            return super().on_train_begin(args, state, control, **kwargs)
        from tqdm.auto import tqdm

        self.start = time.monotonic()
        self.current_step = state.global_step
        if state.is_world_process_zero:
            total = int(round(60 * self.minutes))
            self.training_bar = tqdm(total=total, unit="s", dynamic_ncols=True, desc=f"budget {self.minutes:g} min",
                                     bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} s {postfix}")
            self.training_bar.set_postfix_str(f"step {state.global_step}")

    def on_step_end(self, args, state, control, **kwargs):
        if not self.minutes:
            return super().on_step_end(args, state, control, **kwargs)
        self.current_step = state.global_step
        if state.is_world_process_zero and self.training_bar is not None:
            elapsed = min(time.monotonic() - self.start, self.training_bar.total)
            self.training_bar.update(elapsed - self.training_bar.n)
            self.training_bar.set_postfix_str(f"step {state.global_step}, {elapsed / max(state.global_step, 1):.0f}"
                                              " s/step")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(format_log(logs, state.global_step))
