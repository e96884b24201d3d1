"""The paper's "w/ CL" baseline: InfoNCE fine-tuning of the same backbone on the same data.

The causal LM becomes a sentence-transformers model (transformer body + mean pooling) trained
with ``MultipleNegativesRankingLoss`` on (anchor, positive, hard negative) triples: in-batch
negatives plus the hard negative, the standard contrastive recipe. The training data goes
through :func:`grace_trl.data.load_grace_dataset`, so GRACE and CL read exactly the same rows.

    grace-trl train-cl --config recipes/smollm2-135m/cl_cpu.yaml [--key value ...]

(the command is :mod:`grace_trl.commands.train_cl`).

The saved folder is a sentence-transformers model; ``grace-trl eval --model cl=DIR`` evaluates it
next to GRACE checkpoints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .aliases import resolve_model_name

logger = logging.getLogger(__name__)


@dataclass
class CLConfig:
    model_name_or_path: str = "smollm2-135m"
    dataset_name: str = "sample-nli"  # a grace_trl sample name, a local csv/jsonl/parquet, or a Hub dataset
    column_mapping: str | None = None
    max_samples: int | None = None
    output_dir: str = "outputs/smollm2-135m-cl"
    max_seq_length: int = 128
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    scale: float = 20.0  # MNRL's inverse temperature (1 / 0.05)
    seed: int = 42
    use_cpu: bool = False
    logging_steps: int = 10


def build_cl_model(model_name_or_path: str, max_seq_length: int = 128, device: str | None = None):
    """SentenceTransformer = causal LM body + mean pooling (padding excluded), like GRACE without a rationale."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    path = resolve_model_name(model_name_or_path)
    body = Transformer(path, max_seq_length=max_seq_length)
    tokenizer = body.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    pooling = Pooling(body.get_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[body, pooling], device=device)


def load_triples(source: str, column_mapping: str | None = None, limit: int | None = None):
    """(anchor, positive, negative) columns for MNRL from GRACE's supervised data loader."""
    from datasets import Dataset

    from .data import load_grace_dataset

    data = load_grace_dataset(source, mode="supervised", column_mapping=column_mapping, num_negatives=1, limit=limit)
    return Dataset.from_dict({"anchor": data["query"], "positive": data["positive"],
                              "negative": [n[0] for n in data["negatives"]]})


def train_cl(config: CLConfig):
    """Train and save the CL baseline; returns the trained SentenceTransformer."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    model = build_cl_model(config.model_name_or_path, config.max_seq_length, device="cpu" if config.use_cpu else None)
    train = load_triples(config.dataset_name, config.column_mapping, config.max_samples)
    loss = MultipleNegativesRankingLoss(model, scale=config.scale)
    args = SentenceTransformerTrainingArguments(
        output_dir=config.output_dir,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        learning_rate=config.learning_rate,
        warmup_ratio=config.warmup_ratio,
        seed=config.seed,
        use_cpu=config.use_cpu,
        logging_steps=config.logging_steps,
        save_strategy="no",
        report_to="none",
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # duplicates in a batch would be false in-batch negatives
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss)
    trainer.train()
    model.save(config.output_dir)
    logger.info("saved the CL baseline to %s", config.output_dir)
    return model
