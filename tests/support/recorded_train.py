"""Run ``grace-trl train`` (the real entry module's parser and ``run``) and record what each rank's reward saw.

Every generation batch appends one record to ``RECORD_DIR/rank{i}.json``: the rank's rows, prompts,
rollout token ids, anchor texts and anchor rationale ids, the rewards it got back (gathered over
processes, as TRL returns them) and the values its reward function passed to ``log_metric``. A test
can then replay the same rollouts and anchors in one process with the same weights
(:class:`ReplayTrainer`) and compare: sampling differs per rank, so replaying the recorded tokens is
what makes the comparison exact.

Usage (under ``accelerate launch`` or alone)::

    python tests/support/recorded_train.py RECORD_DIR [grace-trl train options ...]
"""

from __future__ import annotations

import json
import os
import sys

from grace_trl.trainer import GRACETrainer


class RecordingTrainer(GRACETrainer):
    """The real GRACETrainer; after each reward computation it writes the record described above."""

    record_dir: str | None = None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.record_dir is None:
            raise RuntimeError("RecordingTrainer.record_dir is not set")
        records = getattr(self, "_records", [])
        records.append({
            "step": int(self.state.global_step),
            "rank": self.accelerator.process_index,
            "world_size": self.accelerator.num_processes,
            "inputs": [{k: v for k, v in row.items() if k != "grace_embeddings"} for row in inputs],
            "prompts": prompts,
            "completions": completions,
            "completion_ids": [[int(t) for t in c] for c in completion_ids_list],
            "anchor_texts": list(self._last_anchor_texts),
            "anchor_completion_ids": [[int(t) for t in c] for c in self._last_anchor_completions],
            "rewards": rewards.cpu().tolist(),
            # this rank's own values, before TRL averages them over processes for the log
            "logged": {name: values[-1] for name, values in self._pending_metrics.items() if values},
        })
        self._records = records
        os.makedirs(self.record_dir, exist_ok=True)
        path = os.path.join(self.record_dir, f"rank{self.accelerator.process_index}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(records, f)
        os.replace(path + ".tmp", path)
        return rewards


class ReplayTrainer(GRACETrainer):
    """Scores given rollouts in one process with given anchor rationales instead of sampling new ones."""

    def __init__(self, *args, anchor_texts: list[str], anchor_completion_ids: list[list[int]], **kwargs):
        super().__init__(*args, **kwargs)
        self._replay_anchor_ids = [self.prompt_encoder(t).input_ids for t in anchor_texts]
        self._replay_anchor_completions = anchor_completion_ids

    def _generate_anchor_completions(self, model, prompt_ids):
        if [list(p) for p in prompt_ids] != self._replay_anchor_ids:
            raise AssertionError("the replay built other anchor prompts than the recorded anchor texts")
        return [list(c) for c in self._replay_anchor_completions]


def main(argv: list[str]) -> int:
    import grace_trl.trainer as trainer_module
    from grace_trl.commands.train import parse_args, run

    record_dir, *train_argv = argv
    RecordingTrainer.record_dir = record_dir
    # run() builds ``grace_trl.trainer.GRACETrainer``: give it the recording subclass, in this process only
    trainer_module.GRACETrainer = RecordingTrainer
    trainer = run(*parse_args(train_argv))
    if not isinstance(trainer, RecordingTrainer) or not getattr(trainer, "_records", None):
        raise RuntimeError("the entry module did not train with RecordingTrainer: nothing was recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
