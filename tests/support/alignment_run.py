"""Train GRACE a few steps (1 process, or several under torchrun) and record what the reward saw.

Every generation checks that each rollout's anchors are the embeddings of *its own row's* query and
negatives: a reference rationale is decoded greedily for the row's texts, one prompt at a time, and
pooled; the anchor vector the reward received must equal it. Rows have distinct texts, so anchors
moved to another group (wrong order, wrong rank slice, wrong reshape) fail. The first generation's
inputs, rollouts, gathered rewards and logged similarities are written to ``OUT/rank{i}.json`` so
that a single-process run can replay them.

Usage: python tests/support/alignment_run.py MODEL OUT PER_DEVICE_BATCH STEPS_PER_GENERATION
"""

from __future__ import annotations

import json
import os
import sys

import torch
from datasets import Dataset

from grace_trl import GRACEConfig
from grace_trl.generation import ignoring_model_generation_config
from grace_trl.pooling import embed_token_sequences, pool_span
from grace_trl.trainer import GRACETrainer

G = 2
COMPONENTS = ("pos_sim", "neg_sim", "consistency", "cross", "raw")


def distinct_rows(n: int) -> Dataset:
    topics = ["cats", "the stock market", "volcanoes", "jazz", "tax law", "football", "bread", "comets",
              "glaciers", "chess", "opera", "bees", "rust", "tides", "ink", "owls"]
    return Dataset.from_dict({
        "query": [f"What about {topics[i]}?" for i in range(n)],
        "positive": [f"A short note on {topics[i]}." for i in range(n)],
        "negatives": [[f"Nothing to do with {topics[(i + 7) % len(topics)]}."] for i in range(n)],
    })


def make_args(out: str, per_device: int, steps_per_generation: int, max_steps: int = 2) -> GRACEConfig:
    return GRACEConfig(output_dir=out, use_cpu=True, bf16=False, report_to="none", seed=0, num_generations=G,
                       per_device_train_batch_size=per_device, steps_per_generation=steps_per_generation,
                       max_completion_length=6, max_steps=max_steps, learning_rate=1e-3, logging_steps=1,
                       save_strategy="no", num_sample_rationales=0, anchor_temperature=0.0,
                       generation_kwargs={"sequence_bias": {(2,): 9.0}})


class RecordingTrainer(GRACETrainer):
    """GRACETrainer that checks anchor alignment on every generation and records the first one."""

    def build_rollout_embeddings(self, inputs, prompts, completion_ids_list):
        batch = super().build_rollout_embeddings(inputs, prompts, completion_ids_list)
        self._recorded_batch = batch
        return batch

    def _reference(self, texts: list[str]) -> torch.Tensor:
        """Greedy rationale and pooled vector of each text, one prompt at a time (no batching, no padding)."""
        from transformers import GenerationConfig

        model = self.accelerator.unwrap_model(self.model)
        pad = self.grace_tokenizer.pad_token_id
        seqs, spans = [], []
        with torch.no_grad(), ignoring_model_generation_config(model):
            for text in texts:
                enc = self.prompt_encoder(text)
                config = GenerationConfig(**self._anchor_generation_kwargs(pad))
                out = model.generate(torch.tensor([enc.input_ids]), generation_config=config)[0, len(enc.input_ids):]
                comp = out.tolist()
                comp = comp[: comp.index(2) + 1] if 2 in comp else comp
                seqs.append(enc.input_ids + comp)
                spans.append(pool_span(len(enc.input_ids), enc.content_start, len(comp), self.args.pooling))
            return embed_token_sequences(model, seqs, spans, pad).float()

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        batch = self._recorded_batch
        start = batch.local.start
        queries = self._reference([row["query"] for row in inputs])
        negatives = self._reference([row["negatives"][0] for row in inputs])
        got_q = torch.stack([batch.anchors[(start + k) // G] for k in range(len(inputs))]).cpu()
        got_n = torch.stack([batch.negatives[(start + k) // G, 0] for k in range(len(inputs))]).cpu()
        log = getattr(self, "_alignment_log", [])
        log.append({"step": int(self.state.global_step),
                    "query_err": float((got_q - queries).abs().max()),
                    "negative_err": float((got_n - negatives).abs().max()),
                    # how far apart different rows' references are: misalignment would show errors this large
                    "row_gap": float(min((queries[i] - queries[j]).abs().max()
                                         for i in range(len(inputs)) for j in range(len(inputs))
                                         if inputs[i]["query"] != inputs[j]["query"]))})
        self._alignment_log = log
        if len(log) == 1:
            metrics = self._pending_metrics  # what log_metric received for this generation
            self._first = {
                "rank": self.accelerator.process_index,
                "world_size": self.accelerator.num_processes,
                "inputs": [{k: row[k] for k in ("query", "positive", "negatives", "prompt")} for row in inputs],
                "completion_ids": [list(map(int, c)) for c in completion_ids_list],
                "rewards": rewards.cpu().tolist(),
                "logged": {f"grace/{n}": metrics[f"grace/{n}"][-1] for n in COMPONENTS if metrics.get(f"grace/{n}")},
            }
        return rewards


def main(model: str, out: str, per_device: int, steps_per_generation: int) -> None:
    args = make_args(out, per_device, steps_per_generation)
    trainer = RecordingTrainer(model, args=args, train_dataset=distinct_rows(16))
    trainer.train()
    rank = trainer.accelerator.process_index
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump({**trainer._first, "alignment": trainer._alignment_log}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
