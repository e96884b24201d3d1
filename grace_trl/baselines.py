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
from dataclasses import dataclass, field

from .aliases import resolve_model_name

logger = logging.getLogger(__name__)


def _training_arguments_base():
    from sentence_transformers import SentenceTransformerTrainingArguments

    return SentenceTransformerTrainingArguments


@dataclass
class CLConfig(_training_arguments_base()):
    """sentence-transformers' training arguments plus what the baseline needs to build model and data.

    Every ``SentenceTransformerTrainingArguments`` field is accepted (in YAML and as a flag), as
    ``GRACEConfig`` accepts every ``GRPOConfig`` field; only the defaults below differ.
    """

    model_name_or_path: str = field(default="smollm2-135m", metadata={"help": "Model alias, local folder or Hub id."})
    dataset_name: str = field(default="sample-nli", metadata={
        "help": "A grace_trl sample name, a local csv/jsonl/parquet file, or a Hub dataset."})
    column_mapping: str | None = field(default=None, metadata={"help": "e.g. 'query=sent0,positive=sent1'."})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N triples."})
    max_seq_length: int = field(default=128, metadata={"help": "Token limit of each text."})
    scale: float = field(default=20.0, metadata={"help": "MNRL's inverse temperature (1 / 0.05)."})
    output_dir: str | None = field(default="outputs/smollm2-135m-cl", metadata={"help": "Where the model is saved."})
    # duplicates in a batch would be false in-batch negatives
    batch_sampler: str = field(default="no_duplicates", metadata={"help": "sentence-transformers batch sampler."})
    save_strategy: str = field(default="no", metadata={"help": "The final model is always saved."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Trackers to log to."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})


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
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = build_cl_model(config.model_name_or_path, config.max_seq_length, device="cpu" if config.use_cpu else None)
    train = load_triples(config.dataset_name, config.column_mapping, config.max_samples)
    loss = MultipleNegativesRankingLoss(model, scale=config.scale)
    trainer = SentenceTransformerTrainer(model=model, args=config, train_dataset=train, loss=loss)
    trainer.train()
    model.save(config.output_dir)
    logger.info("saved the CL baseline to %s", config.output_dir)
    return model
