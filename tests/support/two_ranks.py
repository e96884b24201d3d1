"""Workers for two real gloo processes (``torch.multiprocessing.spawn``) checking main-process decisions."""

from __future__ import annotations

import json
import os
from pathlib import Path

from grace_trl.distributed import close_process_group


def _init(rank: int, port: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    from accelerate import PartialState

    state = PartialState(cpu=True, backend="gloo")
    assert state.num_processes == 2
    return state


def budget_worker(rank: int, port: int, out: str, spent_before: list[float]):
    """One step end per rank with the given time already spent; records whether the rank stops."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from grace_trl.callbacks import TimeBudgetCallback

    _init(rank, port)
    args = TrainingArguments(output_dir=out, use_cpu=True, report_to="none", save_strategy="steps")
    state, control = TrainerState(global_step=3), TrainerControl()
    state.stateful_callbacks[TimeBudgetCallback.STATE_KEY] = {"spent_seconds": spent_before[rank]}
    budget = TimeBudgetCallback(minutes=1.0)
    budget.on_train_begin(args, state, control)
    control = budget.on_step_end(args, state, control)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"stop": control.should_training_stop,
                                                          "save": control.should_save}))
    close_process_group(barrier=True)


def failing_main_worker(rank: int, port: int, out: str):
    """The main process's function raises; every rank must raise (not wait) and name the failure."""
    from grace_trl.distributed import run_on_main_process

    _init(rank, port)

    def evaluate():
        raise FileNotFoundError("STSBenchmark/sts-dev.csv is missing")

    try:
        run_on_main_process(evaluate)
        outcome = "returned"
    except Exception as err:
        outcome = f"{type(err).__name__}: {err}"
    Path(out, f"rank{rank}.json").write_text(json.dumps(outcome))
    close_process_group(barrier=True)


def result_worker(rank: int, port: int, out: str):
    from grace_trl.distributed import run_on_main_process

    state = _init(rank, port)
    result = run_on_main_process(lambda: {"spearman": 0.5, "rank": state.process_index})
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    close_process_group(barrier=True)
