"""Publish a GRACE checkpoint as one Hub repo that transformers, vLLM and sentence-transformers all load.

The folder holds the causal-LM weights and tokenizer unchanged (so it still generates rationales),
``grace_config.json`` (so :class:`~grace_trl.encoder.GRACEEncoder` embeds exactly as training did), a
model card, and sentence-transformers files. Stock sentence-transformers modules cannot generate a
rationale, so ``SentenceTransformer(repo)`` is GRACE's *no-rationale* encoder: the text goes through
the same chat prefix (system prompt, instruction, role header) given as a sentence-transformers
prompt, the prompt tokens are excluded from mean pooling (``include_prompt=False``), and the vector
is L2-normalised — i.e. the mean over the user-content tokens. The rationale-conditioned embedding
(GRACE's main mode) needs ``GRACEEncoder``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any, Mapping

from .config import SETTINGS_FILE, GRACESettings
from .prompts import CONTENT_SENTINEL, build_messages, template_around_content

logger = logging.getLogger("grace_trl")

ST_ROOT_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
PROMPT_NAME = "grace"
CITATION = """@article{grace2025,
  title   = {GRACE: Generative Representation Learning via Contrastive Policy Optimization},
  journal = {arXiv preprint arXiv:2510.04506},
  year    = {2025},
  url     = {https://arxiv.org/abs/2510.04506}
}"""


def chat_prefix(tokenizer, settings: GRACESettings) -> str:
    """The rendered chat template up to the first character of the text (system prompt, instruction, header)."""
    messages = build_messages(CONTENT_SENTINEL, settings.system_prompt, settings.instruction)
    head, _ = template_around_content(tokenizer, messages, settings.chat_template_kwargs)
    # the instruction is part of the user content; the sentinel stands where the text itself starts
    return head + messages[-1]["content"][: -len(CONTENT_SENTINEL)]


def write_sentence_transformers_files(folder: str, settings: GRACESettings, max_seq_length: int = 512) -> None:
    """Let sentence-transformers write its own config files for the model in ``folder`` (weights untouched)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    # Plain-text modality only: with a chat template sentence-transformers would otherwise render its own chat
    # (no GRACE system prompt) and could not exclude the prefix from pooling. add_special_tokens=False: the chat
    # prefix already carries BOS where the template wants one, exactly as training tokenizes it.
    transformer = Transformer(folder, max_seq_length=max_seq_length,
                              modality_config={"text": {"method": "forward",
                                                        "method_output_name": "last_hidden_state"}},
                              module_output_name="token_embeddings",
                              processing_kwargs={"text": {"add_special_tokens": False}})
    prefix = chat_prefix(transformer.tokenizer, settings)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean", include_prompt=False)
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu",
                                # encode_query / encode_document look up these names: they must not fall back to ""
                                prompts={PROMPT_NAME: prefix, "query": prefix, "document": prefix},
                                default_prompt_name=PROMPT_NAME,
                                similarity_fn_name="cosine")
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp, create_model_card=False)
        for name in ST_ROOT_FILES:
            shutil.copy2(os.path.join(tmp, name), os.path.join(folder, name))
        with open(os.path.join(tmp, "modules.json"), encoding="utf-8") as f:
            for module in json.load(f):
                if module["path"]:
                    dst = os.path.join(folder, module["path"])
                    shutil.rmtree(dst, ignore_errors=True)
                    shutil.copytree(os.path.join(tmp, module["path"]), dst)


def _load_results(results: str | Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from a dict or a JSON file; numbers only, so the card never shows junk."""
    if results is None:
        return {}
    if isinstance(results, (str, os.PathLike)):
        with open(results, encoding="utf-8") as f:
            results = json.load(f)
    if not isinstance(results, Mapping):
        raise ValueError(f"results must map task -> {{metric: value}}, got {type(results).__name__}")
    table: dict[str, dict[str, float]] = {}
    for task, metrics in results.items():
        if not isinstance(metrics, Mapping):
            raise ValueError(f"results[{task!r}] must map metric -> number, got {type(metrics).__name__}")
        for metric, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"results[{task!r}][{metric!r}] must be a number, got {value!r}")
        table[str(task)] = {str(m): float(v) for m, v in metrics.items()}
    return table


def model_card(repo_id: str, settings: GRACESettings, base_model: str | None = None,
               results: Mapping[str, Mapping[str, float]] | None = None,
               training: Mapping[str, Any] | None = None) -> str:
    import yaml

    meta: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "sentence-similarity",
        "tags": ["grace", "embeddings", "sentence-transformers", "feature-extraction", "sentence-similarity", "trl",
                 "text-generation"],
    }
    if base_model:
        meta["base_model"] = base_model
    if results:
        meta["model-index"] = [{
            "name": repo_id.split("/")[-1],
            "results": [{"task": {"type": "feature-extraction"}, "dataset": {"name": task, "type": task},
                         "metrics": [{"type": m, "value": v} for m, v in metrics.items()]}
                        for task, metrics in results.items()],
        }]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", f"# {repo_id.split('/')[-1]}", ""]
    lines += [
        "A text embedding model trained with **GRACE** (Generative Representation Learning via Contrastive Policy "
        "Optimization, arXiv:2510.04506) using [grace-trl](https://pypi.org/project/grace-trl/). The model writes a "
        "short rationale about a text; the mean of its last-layer hidden states over the text and the rationale, "
        "L2-normalised, is the embedding. The weights are an ordinary causal LM, so the same repo also generates "
        "rationales with transformers or vLLM.",
        "",
    ]
    if base_model:
        lines += [f"Base model: [{base_model}](https://huggingface.co/{base_model})", ""]
    lines += ["## Usage", "", "### With rationales (GRACE's embedding)", "", "```python",
              "from grace_trl import GRACEEncoder", "",
              f'encoder = GRACEEncoder.from_pretrained("{repo_id}")',
              'vectors, rationales = encoder.encode(["A man is playing a guitar."], return_rationales=True)',
              "```", "",
              "### Without rationales (sentence-transformers)", "",
              "`SentenceTransformer` loads the same weights as a no-rationale encoder: the text is wrapped in the "
              "training chat prompt (stored as the default prompt) and the user-content tokens are mean-pooled, "
              "matching `GRACEEncoder.encode(..., use_rationale=False)` without the chat template's closing tokens. "
              "Faster, usually less accurate than the rationale embedding.", "",
              "```python", "from sentence_transformers import SentenceTransformer", "",
              f'model = SentenceTransformer("{repo_id}")',
              'embeddings = model.encode(["A man is playing a guitar.", "Someone plays an instrument."])',
              "print(model.similarity(embeddings, embeddings))", "```", "",
              "### As a generator", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
              f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")', "```", "",
              "## GRACE settings (`grace_config.json`)", "", "| setting | value |", "|---|---|"]
    for key, value in vars(settings).items():
        shown = str(value).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {key} | {shown} |")
    lines.append("")
    if training:
        lines += ["## Training", "", "| parameter | value |", "|---|---|"]
        lines += [f"| {k} | {str(v).replace('|', chr(92) + '|')} |" for k, v in training.items()]
        lines.append("")
    if results:
        metrics = sorted({m for v in results.values() for m in v})
        lines += ["## Evaluation", "", "| task | " + " | ".join(metrics) + " |",
                  "|---|" + "---|" * len(metrics)]
        for task, values in results.items():
            cells = " | ".join(f"{values[m]:.4f}" if m in values else "" for m in metrics)
            lines.append(f"| {task} | {cells} |")
        lines.append("")
    lines += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def _training_summary(checkpoint_dir: str) -> dict[str, Any] | None:
    """Key hyper-parameters from a Trainer's training_args.bin-free export: trainer_state.json if present."""
    path = os.path.join(checkpoint_dir, "trainer_state.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    keys = ("global_step", "max_steps", "num_train_epochs", "train_batch_size")
    return {k: state[k] for k in keys if k in state} or None


def prepare_hub_folder(checkpoint_dir: str, output_dir: str, repo_id: str = "grace-model",
                       results: str | Mapping[str, Any] | None = None, base_model: str | None = None,
                       max_seq_length: int = 512, overwrite: bool = False) -> str:
    """Write the folder that :func:`push_to_hub` uploads. A LoRA checkpoint is merged first."""
    from transformers import AutoTokenizer

    from .export import adapter_base_model, export_checkpoint, is_adapter_checkpoint

    if is_adapter_checkpoint(checkpoint_dir):
        base_model = base_model or adapter_base_model(checkpoint_dir)
    table = _load_results(results)  # validate before doing any work
    export_checkpoint(checkpoint_dir, output_dir, "merge", base_model=base_model, overwrite=overwrite)
    settings = GRACESettings.load(output_dir)
    if settings is None:
        logger.warning("%s has no %s; writing GRACE's defaults so every loader agrees", checkpoint_dir, SETTINGS_FILE)
        settings = GRACESettings()
        settings.save(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    if tokenizer.pad_token is None:  # sentence-transformers pads batches (GRACEEncoder does the same)
        tokenizer.pad_token = tokenizer.eos_token
        tokenizer.save_pretrained(output_dir)
    write_sentence_transformers_files(output_dir, settings, max_seq_length)
    if base_model and os.path.isdir(os.path.expanduser(base_model)):
        base_model = None  # a local path means nothing on the Hub
    with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(repo_id, settings, base_model, table, _training_summary(checkpoint_dir)))
    return output_dir


def push_to_hub(checkpoint_dir: str, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str = "Upload GRACE model", results: str | Mapping[str, Any] | None = None,
                base_model: str | None = None, revision: str | None = None) -> str:
    """Prepare the folder in a temporary directory, create the repo if needed and upload it in one commit.

    Returns the commit URL. The token goes to huggingface_hub only and is never logged.
    """
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="grace-push-") as tmp:
        folder = prepare_hub_folder(checkpoint_dir, os.path.join(tmp, "repo"), repo_id, results, base_model)
        api = HfApi(token=token)
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        logger.info("uploading %s to %s", checkpoint_dir, repo_url)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                   repo_type="model", revision=revision)
    return str(getattr(commit, "commit_url", commit))
