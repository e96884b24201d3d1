"""Decisions taken on the main process and shared with every rank.

A rank that decides from its own clock or runs a step alone leaves the others blocked in the next
collective until ``ddp_timeout``; these helpers make the main process decide and every rank follow.
"""

from __future__ import annotations

from typing import Any, Callable


def main_process_decides(value: Any) -> Any:
    """The main process's ``value`` on every process (picklable; returned unchanged on a single process)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    if PartialState().num_processes <= 1:
        return value
    return broadcast_object_list([value], from_process=0)[0]


def run_on_main_process(fn: Callable[[], Any]) -> Any:
    """``fn()`` on the main process only, its result on every process.

    When ``fn`` raises, the main process re-raises it and every other process raises a one-line
    ``RuntimeError`` naming it, instead of waiting for a result that never comes.
    """
    from accelerate import PartialState

    state = PartialState()
    result, error, failure = None, None, None
    if state.is_main_process:
        try:
            result = fn()
        except Exception as err:  # re-raised below, on every process
            error, failure = err, f"{type(err).__name__}: {err}"
    result, failure = main_process_decides((result, failure))
    if failure is not None:
        if error is not None:
            raise error
        raise RuntimeError(f"the main process failed ({' '.join(failure.split())})")
    return result


def close_process_group(barrier: bool = False) -> None:
    """Drop the process group, so no rank exits with it open: a gloo rank can abort in teardown then
    ("terminate called without an active exception"), turning a finished run into a failed exit status.

    ``barrier`` makes the ranks meet first; a finished ``Trainer`` run needs none (its ranks already met).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
